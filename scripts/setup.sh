#!/usr/bin/env bash
# Installs everything Gyre needs on a fresh machine, reusing caches under ~/.cache/gyre:
# a Python virtual environment with pinned dependencies, the control-plane binaries (built
# from the Go module proxy), the Kafka jars (Maven Central) and torch + a Horovod wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
GYRE_CACHE="${GYRE_CACHE:-$HOME/.cache/gyre}"
VENV="${VENV:-$GYRE_CACHE/venv/py311-v1}"
step() { printf '\n==> %s\n' "$*" >&2; }

step "Python environment ($VENV)"
if [[ ! -x "$VENV/bin/python" ]]; then
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev,stream,train]'

step "Control-plane binaries (first build takes a while; cached afterwards)"
bash operators/gyre/controlplane/build-binaries.sh

step "Kafka jars (Maven Central; cached)"
"$VENV/bin/python" -m gyre.pipelines.kafka.fetch

step "Horovod wheel (built once from the PyPI sdist; cached)"
PYTHON="$VENV/bin/python" bash scripts/build-horovod.sh

step "Prometheus (Debian's package; the dashboard queries are checked against it)"
if ! command -v prometheus >/dev/null; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update
  # Recommends would add node-exporter and its timers; the tests start their own Prometheus.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
  if [[ -d /run/systemd/system ]]; then  # the package enables and starts a system service
    $sudo systemctl disable --now prometheus.service || true
  fi
fi
