"""Write MB megabytes of lines to stdout as fast as possible."""

import sys

total = int(sys.argv[2]) << 20
line = b"flooding stdout with this line over and over " * 2 + b"\n"
written = 0
while written < total:
    sys.stdout.buffer.write(line * 100)
    written += len(line) * 100
sys.stdout.buffer.flush()
