#!/usr/bin/env python3
"""Any language works: echoes its [checks.options.py] options back as facts."""

import json
import os

options = json.loads(os.environ.get("PILOT_CHECK_OPTIONS", "{}"))
print(json.dumps({"facts": {"options": options, "batch": os.environ["PILOT_BATCH_SYSTEM"]}}))
