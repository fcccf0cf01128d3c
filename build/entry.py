"""What the one-file binary runs: ``pilot.cli.main`` with the process's argv.

``pilot --pilot-helper NAME ARGS...`` runs one of the checks' helper scripts instead
(``checks/_db12.py``, ``checks/_cvmfs_probe.py``), so that the binary can start them as
separate processes, as the installed package does with its Python.
"""

import sys

HELPERS = {"_db12", "_cvmfs_probe"}

if __name__ == "__main__":
    if sys.argv[1:2] == ["--pilot-helper"] and sys.argv[2:3] and sys.argv[2] in HELPERS:
        import importlib

        importlib.import_module(f"checks.{sys.argv[2]}").main(sys.argv[3:])
        sys.exit(0)
    from pilot.cli import main

    sys.exit(main())
