#!/usr/bin/env bash
# Build (or reuse) and install a Horovod 0.28.1 wheel against the installed torch.
#
# Horovod ships only an sdist on PyPI. Its CMake files ask for C++14, while torch >= 2.1
# headers need C++17, so the sdist is patched before building. The wheel is cached per
# (horovod, torch, cpu|cuda) under ~/.cache/gyre/horovod/ and reused on the next run; a fresh
# machine rebuilds it (about 10-20 minutes on 2 cores).
#
# Usage: scripts/build-horovod.sh            build if needed, then install
#        GYRE_HOROVOD_FORCE=1 scripts/...    rebuild even when a cached wheel exists
#
# Needs: torch installed in the interpreter ($PYTHON, default python3), cmake, a C++17 compiler.
set -euo pipefail

HOROVOD_VERSION="0.28.1"
# Horovod's runtime dependencies, and the build tools its setup.py was verified with
RUNTIME_DEPS=(cloudpickle==2.1.0 psutil==7.2.2 pyyaml==6.0.3 packaging==26.4)
BUILD_TOOLS=(setuptools==65.5.0 wheel==0.48.0)
PYTHON="${PYTHON:-python3}"
JOBS="${GYRE_BUILD_JOBS:-2}"

log() { printf '[build-horovod] %s\n' "$*" >&2; }

# From the installed distribution's metadata: importing torch takes seconds.
torch_version="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')" || {
  log "torch is not importable by $PYTHON; install torch first"
  exit 1
}

# NCCL operations need the CUDA toolkit (nvcc + headers), not only a CUDA build of torch.
flavor="cpu"
if command -v nvcc >/dev/null 2>&1 && "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
  flavor="cuda"
fi

cache_dir="${GYRE_CACHE:-$HOME/.cache/gyre}/horovod/${HOROVOD_VERSION}-torch${torch_version}-${flavor}"
mkdir -p "$cache_dir"

installed_ok() {
  "$PYTHON" - "$HOROVOD_VERSION" <<'EOF'
import sys
import horovod
import horovod.torch as hvd
sys.exit(0 if horovod.__version__ == sys.argv[1] and hvd.gloo_built() else 1)
EOF
}

# Written once installed_ok passed for this interpreter; later runs then only compare the
# installed distribution's version (importing horovod.torch takes seconds).
env_key="$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.prefix.encode()).hexdigest()[:16])')"
verified="$cache_dir/verified-$env_key"
installed_version() {
  "$PYTHON" -c 'import importlib.metadata as m; print(m.version("horovod"))' 2>/dev/null || true
}

wheel="$(ls "$cache_dir"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -n "$wheel" && -z "${GYRE_HOROVOD_FORCE:-}" && -f "$verified" && "$(cat "$verified")" == "$wheel" &&
  "$(installed_version)" == "$HOROVOD_VERSION" ]]; then
  log "horovod $HOROVOD_VERSION already installed from $wheel"
  exit 0
fi
if [[ -n "$wheel" && -z "${GYRE_HOROVOD_FORCE:-}" ]] && installed_ok 2>/dev/null; then
  printf '%s\n' "$wheel" >"$verified"
  log "horovod $HOROVOD_VERSION already installed from $wheel"
  exit 0
fi
if [[ -n "$wheel" && -z "${GYRE_HOROVOD_FORCE:-}" ]]; then
  log "reusing cached wheel $wheel"
else
  # The build runs without isolation (it must see the installed torch to compile the torch
  # extension against it); its build tools go to a private directory on PYTHONPATH so the
  # interpreter's own setuptools stays as it is.
  "$PYTHON" -m pip install --quiet "${RUNTIME_DEPS[@]}"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m pip install --quiet --target "$work/buildtools" "${BUILD_TOOLS[@]}"
  log "downloading horovod==$HOROVOD_VERSION sdist"
  "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "horovod==$HOROVOD_VERSION" -d "$work"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  src="$work/horovod-$HOROVOD_VERSION"
  # torch >= 2.1 headers refuse anything below C++17 ("You need C++17 to compile PyTorch").
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
    "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || {
    log "patching the C++ standard failed"
    exit 1
  }
  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
    HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 MAKEFLAGS="-j$JOBS" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
  if [[ "$flavor" == "cuda" ]]; then
    export HOROVOD_GPU_OPERATIONS=NCCL
  fi
  log "building horovod $HOROVOD_VERSION for torch $torch_version ($flavor, -j$JOBS); this takes a while"
  start=$(date +%s)
  PYTHONPATH="$work/buildtools${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$work/dist" "$src" \
    >"$work/build.log" 2>&1 || {
    tail -n 80 "$work/build.log" >&2
    log "build failed"
    exit 1
  }
  cp "$work"/dist/horovod-"$HOROVOD_VERSION"-*.whl "$cache_dir/"
  wheel="$(ls "$cache_dir"/horovod-"$HOROVOD_VERSION"-*.whl | head -n1)"
  log "built $wheel in $(( $(date +%s) - start ))s"
fi

"$PYTHON" -m pip install --quiet --no-deps --force-reinstall "$wheel"
"$PYTHON" -m pip install --quiet "${RUNTIME_DEPS[@]}"
installed_ok || {
  log "horovod installed but horovod.torch does not import with gloo"
  exit 1
}
printf '%s\n' "$wheel" >"$verified"
log "installed horovod $HOROVOD_VERSION (torch $torch_version, $flavor)"
