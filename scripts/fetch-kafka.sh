#!/usr/bin/env bash
# Fetch the Kafka broker jars from Maven Central into $GYRE_CACHE/kafka/<version>/libs/
# (GYRE_CACHE defaults to ~/.cache/gyre; a no-op when they are cached) and print that directory.
# Usage: scripts/fetch-kafka.sh [--version 4.4.0]
set -euo pipefail
cd "$(dirname "$0")/.."
GYRE_CACHE="${GYRE_CACHE:-$HOME/.cache/gyre}"
export GYRE_CACHE
PYTHON="${PYTHON:-$GYRE_CACHE/venv/py311-v1/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
PYTHONPATH="$PWD/operators${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m gyre.pipelines.kafka.fetch "$@"
