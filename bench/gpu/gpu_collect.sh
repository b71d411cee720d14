#!/usr/bin/env bash
# Wait for the background sweep (bench/gpu/gpu_sweep.sh) up to SECONDS, then pack what it has into $OUT.
# usage: [LOG=/tmp/sweep.log] bash bench/gpu/gpu_collect.sh SECONDS [RESULTS]
RESULTS=${2:-/tmp/gpu-results}
LOG=${LOG:-/tmp/sweep.log}
deadline=$((SECONDS + ${1:-0}))
while [ $SECONDS -lt $deadline ] && [ ! -f "$RESULTS/finished" ]; do sleep 5; done
grep "^####\|^== \|^| " "$LOG" | awk "!seen[\$0]++" | tail -60
tail -5 "$LOG"
for probe in "$RESULTS"/*/*/engine-probe.json; do [ -f "$probe" ] && echo "$probe" && tr -d ' \n' < "$probe" && echo; done
tar czf "$OUT/results.tgz" "$RESULTS" "$LOG" 2>/dev/null
ls -la "$OUT"
