#!/usr/bin/env bash
# Builds the local control plane's binaries from the Go module proxy and caches them
# outside the checkout, keyed by version: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl and the real node's kubelet and kube-proxy (a wrapper module that requires k8s.io/kubernetes and pins
# each k8s.io staging module to its matching v0.x release), etcd, kwok, helm and the real node's
# cluster DNS (CoreDNS with only the plugins it uses, on the plane's client-go).
# A second run finds the binaries and returns at once.
set -euo pipefail

K8S_VERSION="${GYRE_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${GYRE_ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${GYRE_KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${GYRE_HELM_VERSION:-v3.19.0}"
COREDNS_VERSION="${GYRE_COREDNS_VERSION:-v1.14.0}"
CACHE="${GYRE_CACHE:-$HOME/.cache/gyre}"
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
SRC="$CACHE/src"
export GOFLAGS="${GOFLAGS:-} -trimpath"
export CGO_ENABLED=0

mkdir -p "$BIN" "$SRC"
log() { printf '[build-binaries] %s\n' "$*" >&2; }

build_k8s() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy) missing=()
  for b in "${want[@]}"; do [[ -x "$BIN/$b" ]] || missing+=("$b"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local minor="${K8S_VERSION#v1.}" staging_version
  staging_version="v0.${minor}"
  local dir="$SRC/k8s-$K8S_VERSION"
  mkdir -p "$dir"
  log "building ${missing[*]} $K8S_VERSION (first time only; several minutes on 2 cores)"
  (
    cd "$dir"
    local modfile
    modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
      echo "module gyre.dev/controlplane"
      echo
      echo "go 1.24.0"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$modfile" \
        | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
    go mod tidy >/dev/null 2>&1 || go mod tidy
    local commit major="1" minor_only="${minor%%.*}"
    local pkg_ver="k8s.io/component-base/version" cg_ver="k8s.io/client-go/pkg/version"
    local ld="-s -w"
    for p in "$pkg_ver" "$cg_ver"; do
      ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor_only"
      ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    for b in "${missing[@]}"; do
      log "go build $b"
      go build -ldflags "$ld" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b"
      mv "$BIN/$b.tmp" "$BIN/$b"
    done
  )
}

build_etcd() {
  [[ -x "$BIN/etcd" ]] && return 0
  log "building etcd $ETCD_VERSION"
  local dir="$SRC/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  (
    cd "$dir"
    printf 'module gyre.dev/etcd\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod tidy >/dev/null 2>&1 || go mod tidy
    go build -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$BIN/etcd.tmp" "$BIN/etcd"
  )
}

build_coredns() {
  [[ -x "$BIN/coredns" ]] && return 0
  log "building coredns $COREDNS_VERSION (kubernetes, forward, cache, errors, health, bind)"
  local dir="$SRC/coredns-$COREDNS_VERSION" minor="${K8S_VERSION#v1.}"
  mkdir -p "$dir"
  (
    cd "$dir"
    # The plane's client-go (k8s.io staging modules at v0.<minor>): its packages are compiled once.
    {
      printf 'module gyre.dev/coredns\n\ngo 1.24.0\n\nrequire (\n'
      printf '\tgithub.com/coredns/coredns %s\n' "$COREDNS_VERSION"
      for m in api apimachinery client-go; do printf '\tk8s.io/%s v0.%s\n' "$m" "$minor"; done
      printf ')\n'
    } > go.mod
    cat > main.go <<'GO'
// CoreDNS with the plugins the real node's Corefile uses, and no others.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
GO
    go mod tidy >/dev/null 2>&1 || go mod tidy
    go build -ldflags "-s -w" -o "$BIN/coredns.tmp" .
    mv "$BIN/coredns.tmp" "$BIN/coredns"
  )
}

build_go_install() {  # name module version
  local name="$1" mod="$2" ver="$3"
  [[ -x "$BIN/$name" ]] && return 0
  log "building $name $ver"
  local tmp; tmp="$(mktemp -d)"
  GOBIN="$tmp" go install -ldflags "-s -w ${4:-}" "$mod@$ver"
  mv "$tmp/$name" "$BIN/$name"
  rm -rf "$tmp"
}

build_etcd
build_go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
build_go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_k8s
build_coredns
echo "$BIN"
