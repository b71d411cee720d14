cd /work/main
for round in 1 2; do
  for v in old new; do
    if [ $v = old ]; then cp /tmp/ab/old_http.py frontend/http.py; cp /tmp/ab/old_generate.py frontend/grps/generate.py
    else cp /tmp/ab/new/http.py frontend/http.py; cp /tmp/ab/new/generate.py frontend/grps/generate.py; fi
    .venv/bin/python -m bench.side_by_side --model .data/tiny-llama --engine-args '{"max_model_len": 2048, "max_num_seqs": 16, "enforce_eager": true}' \
      --servers ours:2:bench.experiments.request_trace+bench.experiments.request_trace --loads 128x16@1/30*2 --out /tmp/ab/$v-$round > /tmp/ab/$v-$round.log 2>&1
    .venv/bin/python -m bench.experiments.request_trace report /tmp/ab/$v-$round > /tmp/ab/$v-$round.stages 2>&1
  done
done
cp /tmp/ab/new/http.py frontend/http.py; cp /tmp/ab/new/generate.py frontend/grps/generate.py
echo AB DONE
