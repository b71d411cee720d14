# What bench/gpu/gpu_sweep.sh and bench/gpu/fleet_sweep.sh share on the GPU host: the environment of the
# bundle, the machine's description, and one side-by-side step (REPEATS=, PYSPY=, CUDA_DEVICES= for our
# engine workers' GPUs, PIN= for the cores of vLLM's engine core). Sourced after RESULTS is set.
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
MODEL=${MODEL:-$PWD/.gpu/model}
# Without nginx on the host, our frontends share the port through SO_REUSEPORT.
REUSE=$(command -v nginx >/dev/null || echo --reuse-port)
mkdir -p "$RESULTS"

machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
    lscpu | grep -E "^Model name|^CPU\(s\)"
    python3 -c "import vllm, torch, transformers as t; print('vllm', vllm.__version__, 'torch', torch.__version__,
        'transformers', t.__version__)"
    echo "nginx: $(command -v nginx || echo none, frontends use --reuse-port)"
}

PORT=7300
side_by_side() {  # NAME ENGINE_ARGS SERVERS... -- LOADS...
    local name=$1 engine_args=$2; shift 2
    PORT=$((PORT + 100))
    local servers=() loads=()
    while [ "$1" != -- ]; do servers+=("$1"); shift; done; shift
    loads=("$@")
    python3 -m bench.side_by_side --model "$MODEL" --engine-args "$engine_args" $REUSE --warmups 8 --port $PORT \
        --repeats "${REPEATS:-1}" --servers "${servers[@]}" --loads "${loads[@]}" --out "$RESULTS/$name" \
        ${PYSPY:+--py-spy $PYSPY} ${CUDA_DEVICES:+--cuda-visible-devices $CUDA_DEVICES} ${PIN:+--pin-engine-core $PIN}
}
