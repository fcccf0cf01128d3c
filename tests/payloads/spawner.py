"""Fork up to N children that each sleep; a fork bomb with a counter."""

import os
import sys
import time

count = int(sys.argv[2])
for _ in range(count):
    if os.fork() == 0:
        time.sleep(300)
        os._exit(0)
    time.sleep(0.02)
time.sleep(300)
