"""Start a classic double-forked daemon (setsid, stdio to /dev/null) and exit at once."""

import os
import sys
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(300)
        os._exit(0)
    os._exit(0)
print("daemon started", flush=True)
sys.exit(0)
