#!/usr/bin/env bash
# Issue 6's sweep on the benchmark GPU host, in priority order, each step's results kept as it ends.
# By default the whole sweep: ours with 4, 1 and 2 frontends and `vllm serve` with 1 and 4 API
# processes on every load, the engine worker alone, and max-num-seqs 1024 (longer than 30 minutes:
# on a host held for less, run it in parts with STEPS).
# STEPS picks steps, e.g. STEPS="final final4" (run 5: every target point on one machine, ~30 min).
# usage (repo root on the GPU host, bundle installed per ../shared/gpu/README.md, .gpu/model carried):
#   MODEL=/tmp/model setsid bash bench/gpu/gpu_sweep.sh /tmp/gpu-results > /tmp/sweep.log 2>&1 &
# then, in later calls, `bash bench/gpu/gpu_collect.sh SECONDS` waits and packs what is done into $OUT.
# Runs longer than one device command may; it is started in its own session for that reason.
set -uo pipefail
RESULTS=${1:-/tmp/gpu-results}
STEPS=${STEPS:-main vllm4 low ours12 engine high}
ARGS='"load_format": "dummy", "max_model_len": 4096, "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.85'
ENGINE_ARGS="{$ARGS, \"max_num_seqs\": 256}"
WIDE_ENGINE_ARGS="{$ARGS, \"max_num_seqs\": 1024}"
MAIN_LOADS="128x1024@256/512 1024x128@256/512"
LOW_LOADS="128x1024@1/4 128x1024@64/128 1024x128@1/8 1024x128@64/128"
# The loads where our TTFT trailed: the engine loop as it is (with timers) against
# bench/experiments/eager_intake.py.
EAGER_LOADS="128x1024@1/4 128x1024@64/128 1024x128@64/128 1024x128@256/512"
# The same, three times each, with vLLM's own timings of every run (queue, prefill) from /metrics.
REPEAT_LOADS="1024x128@64/128 1024x128@1/8 128x1024@64/128"
# Every target point, ours against one API process on the same machine, the points in question repeated
# (LOAD*R); then four API processes where they were the best `vllm serve` before.
FINAL_LOADS="128x1024@256/512 1024x128@256/512*2 128x1024@1/2*2 1024x128@1/8*3 128x1024@64/128*2 1024x128@64/128*3"
# Concurrency 1 with every stage of each request of ours timed (bench/experiments/request_trace.py).
TRACE_LOADS=${TRACE_LOADS:-"128x1024@1/3*3 1024x128@1/6*3"}
FINAL4_LOADS="128x1024@256/512 1024x128@256/512*2 1024x128@64/128*3"
source "$(dirname "$0")/gpu_common.sh"

engine_alone() {  # the engine worker over ZeroMQ, then vLLM's LLMEngine loop, on one load
    local dir=$RESULTS/engine; mkdir -p "$dir"
    printf 'model: %s\nengine_args: %s\n' "$MODEL" "$ENGINE_ARGS" > "$dir/inference.yml"
    printf 'run_dir: /tmp/zmq-bench\nlog_level: warning\n' > "$dir/server.yml"
    export SERVER_CONFIG=$dir/server.yml INFERENCE_CONFIG=$dir/inference.yml
    python3 -m bench.zmq_bench --start-engine -c 256 -n 512 --input-len 128 --output-len 1024 --warmup 64 \
        --save "$dir/zmq.json" > "$dir/zmq.log" 2>&1
    python3 -m bench.engine_loop_bench -c 256 -n 512 --input-len 128 --output-len 1024 --warmup 64 \
        --save "$dir/loop.json" > "$dir/loop.log" 2>&1
    unset SERVER_CONFIG INFERENCE_CONFIG
    grep -h -A12 "^== " "$dir/zmq.log" "$dir/loop.log"
}

step() {
    echo "#### step $1 at $(date +%T)"
    case $1 in
        main)   side_by_side main "$ENGINE_ARGS" ours:4 vllm:1 -- $MAIN_LOADS ;;
        vllm4)  side_by_side vllm4 "$ENGINE_ARGS" vllm:4 -- $MAIN_LOADS ;;
        engine) engine_alone ;;
        low)    side_by_side low "$ENGINE_ARGS" ours:4 vllm:4 vllm:1 -- $LOW_LOADS ;;
        ours12) side_by_side ours12 "$ENGINE_ARGS" ours:1 ours:2 -- $MAIN_LOADS ;;
        pyspy)  PYSPY=25 side_by_side pyspy "$ENGINE_ARGS" ours:4 -- 128x1024@256/512 ;;
        eager)  side_by_side eager "$ENGINE_ARGS" ours:4:bench.experiments.engine_probe \
                    ours:4:bench.experiments.eager_intake vllm:4 -- $EAGER_LOADS ;;
        ours2)  side_by_side ours2 "$ENGINE_ARGS" ours:2 -- $MAIN_LOADS ;;
        rep)    REPEATS=3 side_by_side rep "$ENGINE_ARGS" ours:4 vllm:4 -- $REPEAT_LOADS ;;
        rep1)   REPEATS=3 side_by_side rep1 "$ENGINE_ARGS" vllm:1 -- $REPEAT_LOADS ;;
        final)  side_by_side final "$ENGINE_ARGS" ours:4 vllm:1 -- $FINAL_LOADS ;;
        final4) side_by_side final4 "$ENGINE_ARGS" vllm:4 -- $FINAL4_LOADS ;;
        trace)  side_by_side trace "$ENGINE_ARGS" ours:4:bench.experiments.request_trace+bench.experiments.request_trace \
                    vllm:1 -- $TRACE_LOADS
                python3 -m bench.experiments.request_trace report "$RESULTS/trace" | tee "$RESULTS/trace/stages.txt" ;;
        high)   side_by_side high "$WIDE_ENGINE_ARGS" ours:4 vllm:4 -- 128x1024@512/1024 128x1024@1024/1024 ;;
    esac
    echo "#### step $1 done at $(date +%T)"
}

machine | tee "$RESULTS/machine.txt"
for name in $STEPS; do step "$name"; done
echo "#### sweep finished"
touch "$RESULTS/finished"
