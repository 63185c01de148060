#!/usr/bin/env bash
# The set-up behind `make demo`, `make test`, `make unit`, `make bench` and CI, on a fresh Debian machine
# as much as on a warm one: it does only what is missing, one line per step.
#   setup/setup.sh demo|test|unit|bench
# - demo, test and bench need root (network namespaces, FRR); without it they stop at once.
# - the Debian packages of setup/debian-packages (all but unit): installed as root, otherwise one line
#   naming what is missing and the command that installs it, and exit 1;
# - the control plane binaries (test, demo, bench): setup/build-control-plane.sh;
# - the virtualenv .venv with l3lb and its test (and bench) extras, reinstalled when pyproject.toml changes;
# - nixpkgs' lib/ (test): tests/nixpkgs_lib.py finds it, or fetches the nixpkgs that flake.lock pins.
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:?usage: setup/setup.sh demo|test|unit|bench}
case $job in
demo | test | bench) needs_root=1 packages=1 control_plane=1 ;;
unit) needs_root=0 packages=0 control_plane=0 ;;
*) echo "setup: unknown job '$job' (demo, test, unit or bench)" >&2 && exit 2 ;;
esac
extras=test
[ "$job" = bench ] && extras=test,bench
root=0
[ "$(id -u)" = 0 ] && root=1

missing=()
if [ "$packages" = 1 ]; then
  for p in $(sed 's/#.*//' setup/debian-packages); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
fi
# A Python without ensurepip (Debian's own, without python3-venv) cannot make the virtualenv.
if [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi

if [ "$root" = 0 ]; then
  install="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$needs_root" = 1 ]; then
    also=""
    [ ${#missing[@]} -gt 0 ] && also=" and the Debian packages ${missing[*]}, which it installs"
    echo "make $job needs root (network namespaces, FRR)$also: run sudo make $job" >&2
    exit 1
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: missing Debian packages ${missing[*]}; install them as root: $install" >&2
    exit 1
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  t0=$(date +%s)
  log=$(mktemp /tmp/l3lb-apt.XXXXXX.log)
  printf 'setup: installing Debian packages %s ...' "${missing[*]}"
  # The lab runs its own FRR in network namespaces: keep apt from starting FRR's system service in the
  # root namespace (policy-rc.d answers "not now"), unless the machine already has a policy of its own.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  rc=0
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}"; } >"$log" 2>&1 || rc=$?
  [ "$own_policy" = 1 ] && rm -f "$policy"
  if [ "$rc" -ne 0 ]; then
    printf ' failed\nsetup: apt-get failed; its output is in %s (last lines below)\n' "$log" >&2
    tail -n 15 "$log" | sed 's/^/  | /' >&2
    exit "$rc"
  fi
  rm -f "$log"
  printf ' %s s\n' "$(($(date +%s) - t0))"
fi

[ "$control_plane" = 1 ] && bash setup/build-control-plane.sh >/dev/null

# The virtualenv, (re)installed when pyproject.toml or the extras change; pip's output goes to a log.
stamp=.venv/.l3lb-setup
want="$(sha256sum pyproject.toml | cut -c1-16) $extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  t0=$(date +%s)
  printf 'setup: virtualenv .venv with l3lb[%s] ...' "$extras"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  if ! .venv/bin/python -m pip install --disable-pip-version-check -q -e ".[$extras]" >.venv/pip.log 2>&1; then
    printf ' failed\nsetup: pip install failed; its output is in .venv/pip.log (last lines below)\n' >&2
    tail -n 15 .venv/pip.log | sed 's/^/  | /' >&2
    exit 1
  fi
  echo "$want" >"$stamp"
  printf ' %s s\n' "$(($(date +%s) - t0))"
  # pip -q prints only warnings and errors: show them rather than bury them in the log.
  [ -s .venv/pip.log ] && sed 's/^/  pip: /' .venv/pip.log
fi
# nixpkgs' lib/ for the module evaluations: found, or fetched once, as tests/nixpkgs_lib.py says; if none of
# its four ways works, one line naming them, and the job stops.
if [ "$job" = test ]; then
  .venv/bin/python tests/nixpkgs_lib.py --fetch
fi
exit 0
