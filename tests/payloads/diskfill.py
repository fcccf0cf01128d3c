"""Write MB megabytes into the job directory, 1 MB every 20 ms; then wait."""

import os
import sys
import time

total = int(sys.argv[2])
block = os.urandom(1 << 20)
with open("filler.dat", "wb") as out:
    for _ in range(total):
        out.write(block)
        out.flush()
        time.sleep(0.02)
time.sleep(300)
