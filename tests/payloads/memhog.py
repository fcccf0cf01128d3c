"""Allocate memory gradually, 10 MB every 50 ms, up to MB megabytes; then hold it."""

import sys
import time

total = int(sys.argv[2])
held = []
for _ in range(total // 10):
    held.append(b"\x01" * (10 << 20))
    time.sleep(0.05)
print(f"holding {len(held) * 10} MB", flush=True)
time.sleep(300)
