#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the Go module proxy, once per
# version, into a cache outside the work tree (default ~/.cache/l3lb-testenv, override with
# L3LB_TESTENV_CACHE).
# Rebuilds only what is missing for the versions pinned in tests/versions.env and prints the cache
# directory on stdout. Progress goes to stderr, one line per step; the Go tool's own output goes to
# build.log in the cache, which the error message names when a step fails.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../tests/versions.env
. "$repo/tests/versions.env"
cache=${L3LB_TESTENV_CACHE:-$HOME/.cache/l3lb-testenv}
kube_dir=$cache/kube-$KUBE_VERSION
etcd_dir=$cache/etcd-$ETCD_VERSION
log=$cache/build.log
mkdir -p "$cache"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils
pod-security-admission sample-apiserver sample-cli-plugin sample-controller"

begin=$(date +%s)
# One step: "control plane: <what> ... <seconds> s (<total> s)", the command's output appended to the log.
step() {
  local what=$1 t0 rc=0
  shift
  t0=$(date +%s)
  printf 'control plane: %s ...' "$what" >&2
  printf '\n== %s\n' "$what" >>"$log"
  "$@" >>"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    printf ' failed\ncontrol plane: %s failed; the Go output is in %s (last lines below)\n' "$what" "$log" >&2
    tail -n 15 "$log" | sed 's/^/  | /' >&2
    exit "$rc"
  fi
  printf ' %s s (%s s in all)\n' "$(($(date +%s) - t0))" "$(($(date +%s) - begin))" >&2
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A module that requires k8s.io/kubernetes at $KUBE_VERSION, in $work/$1, with the given commands as tools.
kube_module() {
  local dir=$work/$1 stage_ver
  shift
  mkdir "$dir" && cd "$dir"
  stage_ver=v0.${KUBE_VERSION#v1.}
  {
    echo "module l3lb.local/kubebuild"
    echo "go 1.24.0"
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    for m in $staging; do echo "replace k8s.io/$m => k8s.io/$m $stage_ver"; done
  } >go.mod
  step "downloading the Kubernetes $KUBE_VERSION modules ($*)" \
    go get -tool $(for cmd in "$@"; do echo "k8s.io/kubernetes/cmd/$cmd@$KUBE_VERSION"; done)
}

kube_ldflags() {
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitTreeState=clean"
    ldflags+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  done
  echo "$ldflags"
}

build_kube() {
  kube_module kube kube-apiserver kube-controller-manager
  mkdir -p "$kube_dir.tmp"
  for cmd in kube-apiserver kube-controller-manager; do
    step "building $cmd $KUBE_VERSION" \
      go build -trimpath -ldflags "$(kube_ldflags)" -o "$kube_dir.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  rm -rf "$kube_dir" && mv "$kube_dir.tmp" "$kube_dir"
}

# kubectl, beside the control plane: the tests show Services' conditions as users see them.
build_kubectl() {
  kube_module kubectl kubectl
  step "building kubectl $KUBE_VERSION" \
    go build -trimpath -ldflags "$(kube_ldflags)" -o "$kube_dir/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl
  mv "$kube_dir/kubectl.tmp" "$kube_dir/kubectl"
}

build_etcd() {
  mkdir "$work/etcd" && cd "$work/etcd"
  printf 'module l3lb.local/etcdbuild\ngo 1.24.0\n' >go.mod
  step "downloading the etcd $ETCD_VERSION modules" go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  mkdir -p "$etcd_dir.tmp"
  step "building etcd $ETCD_VERSION" \
    go build -trimpath -ldflags "-s -w" -o "$etcd_dir.tmp/etcd" go.etcd.io/etcd/server/v3
  rm -rf "$etcd_dir" && mv "$etcd_dir.tmp" "$etcd_dir"
}

if [ ! -x "$etcd_dir/etcd" ] || [ ! -x "$kube_dir/kube-apiserver" ] ||
  [ ! -x "$kube_dir/kube-controller-manager" ] || [ ! -x "$kube_dir/kubectl" ]; then
  command -v go >/dev/null || {
    echo "control plane: go not found; install Go 1.24 or newer (https://go.dev/dl) to build it" >&2
    exit 1
  }
  : >"$log"
  echo "control plane: building what is missing into $cache (first time only, about 5 min on 2 cores)" >&2
  [ -x "$etcd_dir/etcd" ] || build_etcd
  [ -x "$kube_dir/kube-apiserver" ] && [ -x "$kube_dir/kube-controller-manager" ] || build_kube
  [ -x "$kube_dir/kubectl" ] || build_kubectl
fi
echo "$cache"
