#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd from the Go module proxy, once per version,
# into a cache outside the work tree (default ~/.cache/l3lb-testenv, override with L3LB_TESTENV_CACHE).
# Prints the cache directory. Rebuilds only what is missing for the pinned versions.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${L3LB_TESTENV_CACHE:-$HOME/.cache/l3lb-testenv}
kube_dir=$cache/kube-$KUBE_VERSION
etcd_dir=$cache/etcd-$ETCD_VERSION
mkdir -p "$cache"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils
pod-security-admission sample-apiserver sample-cli-plugin sample-controller"

build_kube() {
  local work stage_ver ldflags
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  stage_ver=v0.${KUBE_VERSION#v1.}
  {
    echo "module l3lb.local/kubebuild"
    echo "go 1.24.0"
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    for m in $staging; do echo "replace k8s.io/$m => k8s.io/$m $stage_ver"; done
  } >"$work/go.mod"
  (cd "$work" && go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBE_VERSION")
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitTreeState=clean"
    ldflags+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  done
  mkdir -p "$kube_dir.tmp"
  for cmd in kube-apiserver kube-controller-manager; do
    echo "building $cmd $KUBE_VERSION" >&2
    (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$kube_dir.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  rm -rf "$kube_dir" && mv "$kube_dir.tmp" "$kube_dir"
}

build_etcd() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  printf 'module l3lb.local/etcdbuild\ngo 1.24.0\n' >"$work/go.mod"
  (cd "$work" && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  mkdir -p "$etcd_dir.tmp"
  echo "building etcd $ETCD_VERSION" >&2
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$etcd_dir.tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$etcd_dir" && mv "$etcd_dir.tmp" "$etcd_dir"
}

[ -x "$etcd_dir/etcd" ] || build_etcd
[ -x "$kube_dir/kube-apiserver" ] && [ -x "$kube_dir/kube-controller-manager" ] || build_kube
echo "$cache"
