#!/bin/sh
# Never finishes: the pilot must give up on it (and kill it).
echo $$ > "$PILOT_WORK_DIR/hang.pid"
exec sleep 600
