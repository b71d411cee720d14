set -x
ARGS='{"max_model_len": 2048, "max_num_seqs": 64, "enforce_eager": true}'
for tree in old main old main; do
  n=$((n+1))
  cd /work/wt-$tree 2>/dev/null || cd /work/$tree   # wt-old: a checkout of d80b98f; main: 0742b6a
  .venv/bin/python -m bench.side_by_side --model .data/tiny-llama --servers ours:2:bench.experiments.request_trace+bench.experiments.request_trace \
     --loads 128x64@8/96 --repeats 1 --engine-args "$ARGS" --port 7600 --out /tmp/ab/$tree-$n > /tmp/ab/$tree-$n.log 2>&1
  .venv/bin/python -m bench.experiments.request_trace report /tmp/ab/$tree-$n > /tmp/ab/$tree-$n.stages 2>&1
done
echo DONE
