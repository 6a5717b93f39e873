#!/usr/bin/env bash
# Makes the virtual environment the Python peer runs in (bench/peers/.venv).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -c 'import confluent_kafka, sklearn; print("confluent-kafka", confluent_kafka.version()[0], "librdkafka", confluent_kafka.libversion()[0], "scikit-learn", sklearn.__version__)'
