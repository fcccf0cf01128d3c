"""Burn CPU for up to S seconds."""

import sys
import time

end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    n += 1
print(n, flush=True)
