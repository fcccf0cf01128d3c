#!/bin/sh
# Passes, and reports facts and tags as a JSON object on stdout.
printf '{"facts": {"scratch": "%s", "cores": %s}, "tags": ["sample-exec", "site:test"], "message": "all good"}\n' \
    "$PILOT_WORK_DIR" "$PILOT_CORES"
exit 0
