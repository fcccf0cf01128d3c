"""Try to read each PATH and report; list the job directory's parent; write to /tmp."""

import os
import sys

for path in sys.argv[2:]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        print(f"read {path}: {len(data)} bytes: {data[:40]!r}")
    except OSError as exc:
        print(f"cannot read {path}: {exc.strerror}")
here = os.getcwd()
print(f"parent lists: {sorted(os.listdir(os.path.dirname(here)))}")
with open(f"/tmp/peek-{sys.argv[1]}", "w") as out:
    out.write("payload was here\n")
try:
    with open(os.path.join(os.path.dirname(here), "escape.txt"), "w") as out:
        out.write("x")
    print("wrote outside the job directory")
except OSError as exc:
    print(f"cannot write outside the job directory: {exc.strerror}")
print(f"pids visible: {len([p for p in os.listdir('/proc') if p.isdigit()])}")
