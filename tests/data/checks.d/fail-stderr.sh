#!/bin/sh
# Fails; the last lines of stderr become the message.
echo "checking the frobnicator" >&2
echo "frobnicator missing" >&2
exit 1
