#!/bin/sh
# Any exit code other than 0, 1 and 2 is a failure.
echo "something odd" >&2
exit 3
