#!/usr/bin/env bash
# One GPU lease for issues 22 and 24, in priority order, each step's results kept as it goes
# (GPU seconds on one H200 after the install, estimated from the starts and loads measured there):
#   profile      vLLM's step times on controlled batches, Llama-3-8B shape, issue 24's engine
#                arguments (bench/gpu/profile_steps.py): the simulated engine's profile       ~180 s
#   calibration  ours (4 frontends, one engine): 128/1024 at concurrency 1 (2 prompts a run,
#                ~15 s), 64 (64, ~14 s), 256 (256, ~24 s), then a shared-prefix load under KV
#                pressure (16 prefixes of 2,048 tokens, 2,560 KV blocks, ~8 s a run); 3 runs
#                each; two server starts (~70 s each)                                         ~345 s
#   prefix       calibration's shared-prefix load alone; lease 10: about 36 s a run after a 56 to 135 s start
#   c1           issue 24: ours (4 frontends) against `vllm serve` (1 API), 128/128 at
#                concurrency 1, 30 requests a run (~20 s), 3 runs, every stage of every request
#                timed and every request's SamplingParams logged in each
#                (bench/experiments/request_trace.py)                                        ~270 s
#   placement    two engines of ours on GPU 0 (cuda_visible_devices "0,0", data_parallel_size 2,
#                kv_cache_memory_bytes fixed), 16 shared prefixes under KV pressure: exact,
#                approximate and load placement, 3 runs each (~8 s a run, ~100 s a start)      ~420 s
#   c1fork       c1's ours again with vLLM's engine core forked from the engine worker, as before
#                commit be0c8f9 (VLLM_WORKER_MULTIPROC_METHOD=fork): issue 24's first candidate,
#                A against B on one machine                                                   ~140 s
#   c1pin        c1's ours again with vLLM's engine core process alone on cores PIN_CPUS (0-1) and
#                every other process of ours on the rest                                      ~140 s
#   targets      issue 24's other loads, ours (4 frontends) against `vllm serve` (1 API): 128/1024
#                at 64 (128 prompts) and 256 (512), 1024/128 at 1 (30) and 256 (512), 3 runs ~690 s
#   kill         issue 23: two engines of ours on GPU 0, 128/1024 at concurrency 128, one engine
#                SIGKILLed halfway, against an undisturbed run, 3 repeats (bench/engine_loss.py) ~330 s
#   embeddings   issue 26: a BERT-large shape (bench/gpu/bert_model.py), POST /v1/embeddings, ours
#                (4 frontends) against `vllm serve` with 1 and 4 API processes, 3 runs each  ~240 s
#   targets2     issue 24's loads but c1's, ours (4 frontends) against `vllm serve`
#                (1 API): 128/1024 @64 (128 prompts) and @256 (512), 1024/128 @1 (30) and @256
#                (512), 3 runs                                                                ~570 s
#   placement4   placement's load with four engines of ours on GPU 0 (32 prefixes); lease 9: 545 s
#   c1long       c1 with 1,024-token prompts: 1024/128 at concurrency 1, 30 requests a run, 3 runs,
#                ours (4 frontends) against `vllm serve` (1 API), both traced                 ~420 s;
#                lease 10 with REPEATS=6: 702 s (starts 74 and 71 s, about 47 s a run)
#   vllm_sources the installed vLLM's scheduler, KV cache manager, block pool and engine core loop, copied
#                into the results (what the simulated engine models, checked against it)       ~1 s
#   targets3     1024/128 @256 (512 prompts) and 128/1024 @256 (512): ours (4 frontends) against
#                `vllm serve` with 1 and with 4 API processes (the issue's best at 256), 3 runs;
#                lease 9: 852 s (starts 63, 42 and 33 s)
# The default plan (after lease 5, whose c1 and targets2 ran): c1long placement4 targets3, about 26
# minutes; the earlier leases' steps by STEPS= (lease 5: c1 targets2 placement4; lease 4: kill c1 targets2 placement4; 2026-12-03:
# kill embeddings targets2 placement4, and c1 c1fork c1pin targets; 2026-12-02: profile calibration
# c1 placement c1fork).
#
# usage, from the repository root on the GPU host (bundle installed, ../shared/gpu/README.md):
#   bash bench/gpu/lease_plan.sh start              copies what it needs to /tmp/lease-src and
#                                                   starts the plan there in its own session
#   bash bench/gpu/lease_plan.sh collect SECONDS    waits up to SECONDS for the plan, then packs its
#                                                   results and log into $OUT (every later call)
# Knobs (environment): STEPS (e.g. "c1 placement"), C1LONG_LOADS, TARGET3_LOADS, TARGET3_SERVERS, MODEL (default /tmp/stage/model, made if missing),
# ENGINE_ARGS (JSON), KILL_ARGS, KILL_CONCURRENCY, KILL_TOKENS, KILL_SECONDS, EMBED_ARGS, EMBED_SERVERS,
# EMBED_LOAD, BERT, TARGET2_LOADS, PLACEMENT4_LOADS, PLACEMENT4_SERVERS, PROFILE_FLAGS, CALIBRATION_LOADS, PREFIX_LOADS, PREFIX_BLOCKS, C1_LOADS, TARGET_LOADS, PIN_CPUS,
# PLACEMENT_LOADS, PLACEMENT_ARGS (JSON added to ENGINE_ARGS), REPEATS (3), RESULTS
# (/tmp/lease-results), LOG (/tmp/lease.log). The CPU run of bench/README.md scales them down.
set -uo pipefail
SRC=/tmp/lease-src
RESULTS=${RESULTS:-/tmp/lease-results}
LOG=${LOG:-/tmp/lease.log}

start() {  # a copy outside the checkout: a later call replaces the checkout, and a job's directory with it
    if [ -f "$RESULTS/pid" ] && kill -0 "$(cat "$RESULTS/pid")" 2>/dev/null; then
        echo "a plan is already running (pid $(cat "$RESULTS/pid")): collect it"; return 1
    fi
    rm -rf "$SRC" "$RESULTS/finished" && mkdir -p "$SRC" "$RESULTS"
    cp -r bench common engine_worker frontend conf "$SRC"/
    (cd "$SRC" && RESULTS=$RESULTS setsid bash bench/gpu/lease_plan.sh run > "$LOG" 2>&1 < /dev/null &)
    echo "plan started from $SRC: log $LOG, results $RESULTS"
}

collect() {
    LOG=$LOG bash "$(dirname "$0")/gpu_collect.sh" "${1:-0}" "$RESULTS"
    cat "$RESULTS/c1/stages.txt" "$RESULTS/c1-long/stages.txt" "$RESULTS/c1-fork/stages.txt" \
        "$RESULTS/c1-pin/stages.txt" 2>/dev/null
}

with_args() {  # JSON_A JSON_B: A with B's keys added
    python3 -c 'import json, sys; print(json.dumps({**json.loads(sys.argv[1]), **json.loads(sys.argv[2])}))' "$1" "$2"
}

run() {
    MODEL=${MODEL:-/tmp/stage/model}  # bench/gpu/bundle.sh puts it in the fourth part
    source bench/gpu/gpu_common.sh
    ENGINE_ARGS=${ENGINE_ARGS:-'{"load_format": "dummy", "max_model_len": 4096, "max_num_seqs": 256,
        "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.85}'}
    STEPS=${STEPS:-c1long placement4 targets3}
    REPEATS=${REPEATS:-3}
    CALIBRATION_LOADS=${CALIBRATION_LOADS:-"128x1024@1/2 128x1024@64/64 128x1024@256/256"}
    # 16 prefixes of 128 blocks of 16 tokens (2,048 blocks) and the running requests' own blocks
    # overflow 2,560 blocks: prefixes are evicted and computed again.
    PREFIX_BLOCKS=${PREFIX_BLOCKS:-2560}
    PREFIX_LOADS=${PREFIX_LOADS:-"p2048+128/16x128@64/256"}
    C1_LOADS=${C1_LOADS:-"128x128@1/30"}
    TARGET_LOADS=${TARGET_LOADS:-"128x1024@64/128 128x1024@256/512 1024x128@1/30 1024x128@256/512"}
    PLACEMENT_LOADS=${PLACEMENT_LOADS:-"p2048+128/16x128@128/256"}
    PLACEMENT4_LOADS=${PLACEMENT4_LOADS:-"p2048+128/32x128@256/512"}
    TARGET2_LOADS=${TARGET2_LOADS:-"128x1024@64/128 128x1024@256/512 1024x128@1/30 1024x128@256/512"}
    C1LONG_LOADS=${C1LONG_LOADS:-"1024x128@1/30"}
    TARGET3_LOADS=${TARGET3_LOADS:-"1024x128@256/512 128x1024@256/512"}
    KILL_ARGS=${KILL_ARGS:-'{}'}  # added to bench/engine_loss.py's GPU engine arguments
    EMBED_ARGS=${EMBED_ARGS:-'{"max_model_len": 512, "load_format": "dummy"}'}
    EMBED_SERVERS=${EMBED_SERVERS:-"ours:4 vllm:1 vllm:4"}
    EMBED_LOAD=${EMBED_LOAD:-"--inputs 8 --input-len 128 --concurrency 32 --requests 1000 --warmups 20"}
    # Each engine's KV memory fixed (vLLM's profiling assumes no other process on the GPU changes
    # its memory use); gpu_memory_utilization only has to pass vLLM's start-up check of free memory.
    PLACEMENT_ARGS=${PLACEMENT_ARGS:-'{"data_parallel_size": 2, "gpu_memory_utilization": 0.3,
        "kv_cache_memory_bytes": 8589934592}'}
    echo $$ > "$RESULTS/pid"
    machine | tee "$RESULTS/machine.txt"
    [ -d "$MODEL" ] || python3 -m bench.gpu.gpu_model "$MODEL"
    for name in $STEPS; do
        echo "#### step $name at $(date +%T)"
        step "$name"
        echo "#### step $name done at $(date +%T)"
    done
    echo "#### plan finished"
    touch "$RESULTS/finished"
}

step() {
    case $1 in
        profile)
            mkdir -p "$RESULTS/profile"
            python3 -m bench.gpu.profile_steps --model "$MODEL" --engine-args "$ENGINE_ARGS" \
                --out "$RESULTS/profile/profile.json" ${PROFILE_FLAGS:-} > "$RESULTS/profile/profile.log" 2>&1
            grep "^engine ready\|: [0-9]* steps in\|Error" "$RESULTS/profile/profile.log" ;;
        calibration)
            REPEATS=$REPEATS side_by_side calibration "$ENGINE_ARGS" ours:4 -- $CALIBRATION_LOADS
            step prefix ;;
        prefix)
            REPEATS=$REPEATS side_by_side calibration-prefix \
                "$(with_args "$ENGINE_ARGS" "{\"num_gpu_blocks_override\": $PREFIX_BLOCKS}")" ours:4 -- $PREFIX_LOADS ;;
        c1)
            REPEATS=$REPEATS side_by_side c1 "$ENGINE_ARGS" \
                ours:4:bench.experiments.request_trace+bench.experiments.request_trace \
                vllm:1:bench.experiments.request_trace -- $C1_LOADS
            python3 -m bench.experiments.request_trace report "$RESULTS/c1" > "$RESULTS/c1/stages.txt" ;;
        c1long)
            REPEATS=$REPEATS side_by_side c1-long "$ENGINE_ARGS" \
                ours:4:bench.experiments.request_trace+bench.experiments.request_trace \
                vllm:1:bench.experiments.request_trace -- $C1LONG_LOADS
            python3 -m bench.experiments.request_trace report "$RESULTS/c1-long" > "$RESULTS/c1-long/stages.txt" ;;
        targets3)
            REPEATS=$REPEATS side_by_side targets3 "$ENGINE_ARGS" ${TARGET3_SERVERS:-ours:4 vllm:1 vllm:4} -- $TARGET3_LOADS ;;
        c1pin)
            PIN=${PIN_CPUS:-0-1} REPEATS=$REPEATS side_by_side c1-pin "$ENGINE_ARGS" \
                ours:4:bench.experiments.request_trace+bench.experiments.request_trace -- $C1_LOADS
            python3 -m bench.experiments.request_trace report "$RESULTS/c1-pin" > "$RESULTS/c1-pin/stages.txt" ;;
        targets)
            REPEATS=$REPEATS side_by_side targets "$ENGINE_ARGS" ours:4 vllm:1 -- $TARGET_LOADS ;;
        c1fork)
            VLLM_WORKER_MULTIPROC_METHOD=fork REPEATS=$REPEATS side_by_side c1-fork "$ENGINE_ARGS" \
                ours:4:bench.experiments.request_trace+bench.experiments.request_trace -- $C1_LOADS
            python3 -m bench.experiments.request_trace report "$RESULTS/c1-fork" > "$RESULTS/c1-fork/stages.txt" ;;
        kill)
            python3 -m bench.engine_loss --backend gpu --model "$MODEL" --concurrency ${KILL_CONCURRENCY:-128} \
                --tokens ${KILL_TOKENS:-1024} --scenarios undisturbed,sigkill --repeats "$REPEATS" \
                --undisturbed-s ${KILL_SECONDS:-20} --engine-args "$KILL_ARGS" --out "$RESULTS/kill" \
                > "$RESULTS/kill.log" 2>&1
            grep "^{\|ready\|Error" "$RESULTS/kill.log" ;;
        embeddings)
            local bert=${BERT:-/tmp/stage/bert-large}
            [ -d "$bert" ] || python3 -m bench.gpu.bert_model "$bert"
            python3 -m bench.embeddings_bench --model "$bert" --reuse-port \
                --engine-args "$EMBED_ARGS" --servers $EMBED_SERVERS --repeats "$REPEATS" $EMBED_LOAD \
                --out "$RESULTS/embeddings" > "$RESULTS/embeddings.log" 2>&1
            grep "^|\|Error" "$RESULTS/embeddings.log" ;;
        targets2)
            REPEATS=$REPEATS side_by_side targets2 "$ENGINE_ARGS" ours:4 vllm:1 -- $TARGET2_LOADS ;;
        placement4)
            local args4
            args4=$(with_args "$(with_args "$ENGINE_ARGS" "$PLACEMENT_ARGS")" \
                "{\"num_gpu_blocks_override\": $PREFIX_BLOCKS, \"data_parallel_size\": 4, \"gpu_memory_utilization\": 0.2}")
            CUDA_DEVICES=0,0,0,0 REPEATS=$REPEATS side_by_side placement4 "$args4" \
                ${PLACEMENT4_SERVERS:-ours:4 ours:4@approximate ours:4@load} -- $PLACEMENT4_LOADS ;;
        placement)
            local args
            args=$(with_args "$(with_args "$ENGINE_ARGS" "$PLACEMENT_ARGS")" "{\"num_gpu_blocks_override\": $PREFIX_BLOCKS}")
            CUDA_DEVICES=0,0 REPEATS=$REPEATS side_by_side placement "$args" \
                ours:4 ours:4@approximate ours:4@load -- $PLACEMENT_LOADS ;;
        vllm_sources)
            # The installed vLLM's scheduler, KV cache and engine core loop, kept beside the runs: what the
            # simulated engine models is checked against the vLLM that ran (docs/fleet.md)
            python3 - "$RESULTS/vllm-sources" <<'PY'
import pathlib, shutil, sys, vllm
root, out = pathlib.Path(vllm.__file__).parent, pathlib.Path(sys.argv[1])
for name in ("v1/core/sched/scheduler.py", "v1/core/sched/async_scheduler.py", "v1/core/kv_cache_manager.py",
             "v1/core/block_pool.py", "v1/engine/core.py", "config/scheduler.py"):
    if (root / name).exists():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, out / name)
print("vLLM", vllm.__version__, "sources in", out)
PY
            ;;
        *) echo "unknown step $1" ;;
    esac
}

case ${1:-} in
    start) start ;;
    collect) collect "${2:-0}" ;;
    run) run ;;
    *) echo "usage: bash bench/gpu/lease_plan.sh start | collect SECONDS"; exit 2 ;;
esac
