#!/bin/sh
# Shipped in the input sandbox of sandbox.jdl: say where and when it ran.
echo "job ${PILOT_JOB_ID} on $(hostname) at site ${PILOT_SITE}"
date -u
ls -la
