"""Sleep without using any CPU."""

import sys
import time

print("sleeping", flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 300)
