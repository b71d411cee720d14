#!/usr/bin/env bash
# Wait for the background sweep (bench/gpu/gpu_sweep.sh) up to SECONDS, then pack what it has into $OUT.
# usage: bash bench/gpu/gpu_collect.sh SECONDS [RESULTS]
RESULTS=${2:-/tmp/gpu-results}
deadline=$((SECONDS + ${1:-0}))
while [ $SECONDS -lt $deadline ] && [ ! -f "$RESULTS/finished" ]; do sleep 5; done
grep "^####\|^== \|^| " /tmp/sweep.log | awk "!seen[\$0]++" | tail -60
tail -5 /tmp/sweep.log
for probe in "$RESULTS"/*/*/engine-probe.json; do [ -f "$probe" ] && echo "$probe" && tr -d ' \n' < "$probe" && echo; done
tar czf "$OUT/results.tgz" "$RESULTS" /tmp/sweep.log 2>/dev/null
ls -la "$OUT"
