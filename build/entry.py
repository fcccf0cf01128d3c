"""What the one-file binary runs: ``pilot.cli.main`` with the process's argv."""

import sys

from pilot.cli import main

if __name__ == "__main__":
    sys.exit(main())
