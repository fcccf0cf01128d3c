"""``python -m testbed.dirac_server up|down|env`` (state in $PILOT_DIRAC_STATE)."""

import sys

from .harness import main

sys.exit(main())
