#!/usr/bin/env bash
# Fetch the Kafka broker jars from Maven Central into ~/.cache/gyre/kafka/<version>/libs/
# (a no-op when they are cached). Usage: scripts/fetch-kafka.sh [--version 4.4.0]
set -euo pipefail
exec python3 -m gyre.pipelines.kafka.fetch "$@"
