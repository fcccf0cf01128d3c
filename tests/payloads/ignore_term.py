"""Ignore SIGTERM, in this process and in a child, and sleep."""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.fork()  # the child inherits the ignored SIGTERM
print("ignoring SIGTERM", flush=True)
for _ in range(3000):
    time.sleep(0.1)
sys.exit(0)
