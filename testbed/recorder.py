"""Append "<job id> <pid>" to an execution log (argv 2), sleep S seconds (argv 3), print
the job id; with a 4th argument "daemon", leave a double-forked setsid daemon behind
first, and keep a child of its own, both sleeping (orphans to be)."""

import os
import sys
import time

log_path, seconds = sys.argv[2], float(sys.argv[3])
job = os.environ.get("PILOT_JOB_ID", "?")
fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
os.write(fd, f"{job} {os.getpid()}\n".encode())
os.close(fd)
if len(sys.argv) > 4 and sys.argv[4] == "daemon":
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(null, std)
            time.sleep(300)
            os._exit(0)
        os._exit(0)
    if os.fork() == 0:
        time.sleep(300)
        os._exit(0)
time.sleep(seconds)
print(f"job {job} done", flush=True)
