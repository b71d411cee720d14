#!/usr/bin/env bash
# The fleet on the benchmark GPU host (N GPUs, N = DP, default 2): ours with N engine workers
# against `vllm serve --data-parallel-size N` and ours with one engine, all driven by
# `vllm bench serve` through bench/side_by_side.py, each step's results kept as it ends.
#   random: 128/1024 and 1024/128 at concurrency 256·N: ours DP=N (prefix routing), vllm DP=N with
#           1 and N API processes, ours DP=1 (its own concurrency 256).
#   prefix: a prefix_repetition load with 8·N prefixes of PREFIX_LEN tokens and the KV cache limited
#           the same on both sides (num_gpu_blocks_override): all prefixes overflow one engine's cache
#           but fit the fleet's. Ours DP=N with exact prefix placement, with approximate placement
#           (`ours:4@approximate`) and with load-only routing (`ours:4@load`), vllm DP=N. Each row has
#           the load's prefix-cache hit rate.
# usage (repo root on the GPU host, bundle installed per ../shared/gpu/README.md, .gpu/model carried):
#   DP=2 MODEL=/tmp/model setsid bash bench/gpu/fleet_sweep.sh /tmp/fleet-results > /tmp/fleet.log 2>&1 &
# then `LOG=/tmp/fleet.log bash bench/gpu/gpu_collect.sh SECONDS /tmp/fleet-results` waits and packs what is
# done into $OUT.
# STEPS picks steps, e.g. STEPS="prefix"; RANDOM_LOADS, ONE_LOADS, PREFIX_LOADS, RANDOM_SERVERS and PREFIX_SERVERS override
# what each step runs (side_by_side's --loads and --servers syntax).
set -uo pipefail
RESULTS=${1:-/tmp/fleet-results}
DP=${DP:-2}
STEPS=${STEPS:-random prefix one}
ARGS='"load_format": "dummy", "max_model_len": 4096, "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.85'
FLEET_ARGS="{$ARGS, \"max_num_seqs\": 256, \"data_parallel_size\": $DP}"
ONE_ARGS="{$ARGS, \"max_num_seqs\": 256}"
C=$((256 * DP))
RANDOM_LOADS=${RANDOM_LOADS:-"128x1024@$C/$((2 * C)) 1024x128@$C/$((2 * C))"}
ONE_LOADS=${ONE_LOADS:-"128x1024@256/512 1024x128@256/512"}
# 8·N prefixes of 2048 tokens (128 blocks of 16 each: 1,024 blocks for 8 of them) and a cache of
# 2,560 blocks per engine: 8 prefixes and the running requests' own blocks fit one engine, all 8·N do not.
PREFIX_LEN=${PREFIX_LEN:-2048}
PREFIX_BLOCKS=${PREFIX_BLOCKS:-2560}
PC=$((64 * DP))
PREFIX_LOADS=${PREFIX_LOADS:-"p$PREFIX_LEN+128/$((8 * DP))x128@$PC/$((16 * PC))"}
PREFIX_ARGS="{$ARGS, \"max_num_seqs\": 256, \"data_parallel_size\": $DP, \"num_gpu_blocks_override\": $PREFIX_BLOCKS}"
source "$(dirname "$0")/gpu_common.sh"

step() {
    echo "#### step $1 at $(date +%T)"
    case $1 in
        random) side_by_side random "$FLEET_ARGS" ${RANDOM_SERVERS:-ours:4 vllm:1 "vllm:$DP"} -- $RANDOM_LOADS ;;
        prefix) side_by_side prefix "$PREFIX_ARGS" ${PREFIX_SERVERS:-ours:4 ours:4@approximate ours:4@load "vllm:$DP"} -- $PREFIX_LOADS ;;
        one)    side_by_side one "$ONE_ARGS" ours:4 -- $ONE_LOADS ;;
    esac
    echo "#### step $1 done at $(date +%T)"
}

machine | tee "$RESULTS/machine.txt"
for name in $STEPS; do step "$name"; done
echo "#### sweep finished"
touch "$RESULTS/finished"
