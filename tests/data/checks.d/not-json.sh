#!/bin/sh
# Passes, but prints text that is not JSON: ignored with a logged warning.
echo "hello, this is not JSON"
exit 0
