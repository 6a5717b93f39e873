#!/usr/bin/env bash
# Regenerates the XGBoost, LightGBM and ONNX fixtures and their reference predictions, made by
# each format's own library (xgboost, lightgbm, onnxruntime). CI does not run this: the
# generated files are committed. Versions are pinned so that a rerun gives the same files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${GBM_VENV:-/tmp/venv10}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "xgboost-cpu==3.1.3" "lightgbm==4.7.0" "scikit-learn==1.9.0" \
    "skl2onnx==1.20.0" "onnxruntime==1.32.0" "onnx==1.23.2" "numpy==2.4.6"
cd "$here"
"$venv/bin/python" make_fixtures.py
