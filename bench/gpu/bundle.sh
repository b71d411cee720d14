#!/usr/bin/env bash
# The GPU host's bundle: ../shared/gpu/bundle.sh with bench/gpu/extra.txt as its extra wheels, and
# the benchmark model (bench/gpu/gpu_model.py) in the fourth part, so it arrives with the install
# (/tmp/stage/model there).
# usage (repository root; .gpu/ is ignored by git): bash bench/gpu/bundle.sh [.gpu]
set -euo pipefail
DEST=${1:-.gpu}
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${SHARED_GPU:-$HERE/../../../shared/gpu}
WORK=$(mktemp -d)
cp "$SHARED"/bundle.sh "$SHARED"/deps.txt "$SHARED"/install.sh "$WORK"/
cat "$HERE/extra.txt" ${SHARED_EXTRA:-$( [ -f "$SHARED/extra.txt" ] && echo "$SHARED/extra.txt")} \
    | grep -v '^#' > "$WORK/extra.txt"
bash "$WORK/bundle.sh" "$DEST"
rm -rf "$WORK" "$DEST/p4/model"
"${PYTHON:-.venv/bin/python}" -m bench.gpu.gpu_model "$DEST/p4/model" > /dev/null
du -sh "$DEST"/p*
