"""Print start and end times and the cores given, sleeping S seconds between them."""

import os
import sys
import time

start = time.time()
time.sleep(float(sys.argv[2]))
print(f"start={start:.3f} end={time.time():.3f} cores={os.environ.get('NUMBER_OF_PROCESSORS')}")
