#!/usr/bin/env bash
# Regenerates the PMML fixtures and their JPMML-Evaluator reference predictions.
#
# Needs Python 3.10+ and Java 17 (the exporters and the evaluator are Java underneath); the
# committed outputs mean tests and CI need neither. Versions are pinned because the exporters
# refuse library versions they were not built for (see the README in this directory).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PMML_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q \
    "scikit-learn==1.9.0" "sklearn2pmml==0.133.1" "jpmml-evaluator==0.16.0" pandas \
    "pyspark>=4.2,<4.3" "pyspark2pmml==0.12.0" py4j
cd "$here"
"$venv/bin/python" make_sklearn.py
if [ "${SKIP_SPARK:-0}" != 1 ]; then
    "$venv/bin/python" make_spark.py
fi
"$venv/bin/python" make_reference.py
