#!/bin/sh
# Exit code 2: a warning.
echo "scratch is slow" >&2
exit 2
