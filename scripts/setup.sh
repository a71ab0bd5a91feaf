#!/usr/bin/env bash
# Installs everything Gyre needs on a fresh machine, reusing caches under $GYRE_CACHE
# (~/.cache/gyre): a Python virtual environment with pinned dependencies, the control-plane
# binaries and the real node's kubelet, kube-proxy and CoreDNS (built from the Go module proxy), the real node's
# containerd, runc and CNI plugins and the image builder's podman and debootstrap (Debian's
# packages) with a locally built pause image, the Kafka jars (Maven Central), torch + a Horovod
# wheel, PySpark and Redis (the features extra and Debian's redis-server). The prerequisites
# are checked first, and all that are missing are named before anything is installed. A run
# that finds everything cached takes seconds.
#
# Usage: scripts/setup.sh           check the prerequisites, then install what is not cached
#        scripts/setup.sh --check   only check the prerequisites (exit status 1 if one is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
GYRE_CACHE="${GYRE_CACHE:-$HOME/.cache/gyre}"
export GYRE_CACHE
VENV="${VENV:-$GYRE_CACHE/venv/py311-v1}"
# Written last: `make test` runs this script when it is missing or older than pyproject.toml.
SETUP_STAMP="$VENV/.gyre-setup-complete"
KSERVE_PIN="kserve==0.21.0"
TORCH_CPU_INDEX="${GYRE_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
PYTHON_WANT="3.11"
JAVA_MIN=17
# The Go version the control-plane wrapper module declares (its `go` directive).
GO_MIN="$(sed -n 's/^ *echo "go \([0-9][0-9.]*\)"$/\1/p' operators/gyre/controlplane/build-binaries.sh | head -n1)"
GO_MIN="${GO_MIN:-1.24.0}"

step() { printf '\n==> %s\n' "$*" >&2; }
say() { printf '    %s\n' "$*" >&2; }

# version_ge A B: A >= B, comparing dotted versions.
version_ge() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]; }

find_python() {
  local candidate
  for candidate in "python$PYTHON_WANT" python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      [[ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" == "$PYTHON_WANT" ]]; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

java_major() {  # `openjdk version "17.0.15" ...` -> 17; `java version "1.8.0_392"` -> 8
  local v
  v="$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1)"
  [[ "$v" == 1.* ]] && v="${v#1.}"
  printf '%s\n' "${v%%[._-]*}"
}

check_prerequisites() {
  local missing=() v
  if ! PYTHON_BIN="$(find_python)"; then
    missing+=("Python $PYTHON_WANT (python$PYTHON_WANT or python3 on PATH; e.g. Debian 12's python3, or pyenv)")
  fi
  if ! command -v go >/dev/null 2>&1; then
    missing+=("Go >= $GO_MIN (https://go.dev/dl/; put its bin/ on PATH)")
  else
    v="$(go env GOVERSION 2>/dev/null || true)"
    v="${v#go}"
    if [[ -z "$v" ]] || ! version_ge "$v" "$GO_MIN"; then
      missing+=("Go >= $GO_MIN (found ${v:-an unknown version}; https://go.dev/dl/)")
    fi
  fi
  if ! command -v java >/dev/null 2>&1; then
    missing+=("Java >= $JAVA_MIN (Debian: apt-get install openjdk-17-jdk-headless)")
  else
    v="$(java_major)"
    if [[ ! "$v" =~ ^[0-9]+$ ]] || ((v < JAVA_MIN)); then
      missing+=("Java >= $JAVA_MIN (found ${v:-an unknown version}; Debian: apt-get install openjdk-17-jdk-headless)")
    fi
  fi
  command -v mvn >/dev/null 2>&1 || missing+=("Maven (Debian: apt-get install maven)")
  command -v cmake >/dev/null 2>&1 || missing+=("cmake (Debian: apt-get install cmake)")
  if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
    missing+=("a C++17 compiler: c++, g++ or clang++ (Debian: apt-get install g++)")
  fi
  if ((${#missing[@]})); then
    printf 'setup: missing prerequisites; install these, then run make setup again:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    return 1
  fi
  say "prerequisites: Python $PYTHON_WANT ($PYTHON_BIN), Go $(go env GOVERSION), Java $(java_major), $(mvn -v 2>/dev/null | head -n1 | sed 's/\x1b\[[0-9;]*m//g'), $(cmake --version | head -n1)"
}

# torch: the CPU build where there is no NVIDIA GPU (PyPI's default build bundles about 3 GB
# of CUDA libraries). The CPU wheels live on PyTorch's own index; where that cannot be
# reached, PyPI's default build is installed instead, and this says so.
install_torch() {
  local pin
  pin="$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')"
  if "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '${pin#torch==}' else 1)" 2>/dev/null; then
    say "$pin is installed"
    return 0
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    say "nvidia-smi found: $pin from PyPI (CUDA build)"
    return 0  # the dependency install below fetches it
  fi
  say "no NVIDIA GPU (no nvidia-smi): $pin from the CPU wheel index $TORCH_CPU_INDEX"
  local out
  # Short timeouts: where the index is unreachable, the attempt fails in seconds.
  if out="$("$VENV/bin/python" -m pip install -q --timeout 10 --retries 0 --index-url "$TORCH_CPU_INDEX" "$pin" 2>&1)"; then
    say "installed $pin (CPU build)"
    return 0
  fi
  say "pip: $(printf '%s\n' "$out" | tail -n1)"
  say "no torch from the CPU wheel index (unreachable from here?): falling back to PyPI's default torch build (it includes CUDA libraries, about 3 GB)"
}

if [[ "${1:-}" == "--check" ]]; then
  check_prerequisites
  exit
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--check]" >&2; exit 2; }

step "Prerequisites"
check_prerequisites

step "Python environment ($VENV)"
if [[ ! -x "$VENV/bin/python" ]]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON_BIN" -m venv "$VENV"
fi
# The dependencies are reinstalled when pyproject.toml changes, and only then.
deps_key="$(sha256sum pyproject.toml | cut -d' ' -f1)"
deps_stamp="$VENV/.gyre-deps"
if [[ -f "$deps_stamp" && "$(cat "$deps_stamp")" == "$deps_key" ]]; then
  say "dependencies match pyproject.toml"
else
  "$VENV/bin/python" -m pip install -q --upgrade pip
  install_torch
  "$VENV/bin/python" -m pip install -q -e '.[dev,stream,train,experiment,serve,features,search,plot]'
  # kserve without its declared dependencies: the `serve` extra has what it needs (see there).
  "$VENV/bin/python" -m pip install -q --no-deps "$KSERVE_PIN"
  printf '%s\n' "$deps_key" >"$deps_stamp"
fi

step "Control-plane binaries and the real node's kubelet, kube-proxy and CoreDNS (first build takes a while; cached afterwards)"
bash operators/gyre/controlplane/build-binaries.sh >/dev/null

step "Real node: containerd, runc, CNI plugins, iptables, podman, debootstrap (Debian's packages), the pause image"
node_missing=()
command -v containerd >/dev/null || node_missing+=(containerd)
command -v runc >/dev/null || node_missing+=(runc)
[[ -x /usr/lib/cni/bridge ]] || node_missing+=(containernetworking-plugins)
command -v iptables >/dev/null || node_missing+=(iptables)
# The images are built with podman on a debootstrapped base (gyre images; no Docker).
command -v podman >/dev/null || node_missing+=(podman)
command -v debootstrap >/dev/null || node_missing+=(debootstrap)
if ((${#node_missing[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${node_missing[@]}"
  if [[ -d /run/systemd/system ]]; then  # each plane starts a containerd of its own
    $sudo systemctl disable --now containerd.service || true
  fi
else
  say "containerd, runc, CNI plugins, iptables, podman and debootstrap are installed"
fi
# A static C program packed as an OCI archive; each real node imports it at start.
PYTHONPATH="$PWD/operators" "$VENV/bin/python" -m gyre.controlplane.images >/dev/null

step "Kafka jars (Maven Central; cached in $GYRE_CACHE/kafka)"
PYTHONPATH="$PWD/operators" "$VENV/bin/python" -m gyre.pipelines.kafka.fetch >/dev/null

step "Horovod wheel (built once from the PyPI sdist; cached)"
PYTHON="$VENV/bin/python" bash scripts/build-horovod.sh

step "Redis (Debian's redis-server: the FeatureJob's online store on the local runtime; the model server's tests start their own)"
if ! command -v redis-server >/dev/null; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends redis-server
  if [[ -d /run/systemd/system ]]; then  # the package enables a system service; each FeatureJob runs its own
    $sudo systemctl disable --now redis-server.service || true
  fi
else
  say "redis-server is installed"
fi

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

touch "$SETUP_STAMP"
step "Setup complete"
