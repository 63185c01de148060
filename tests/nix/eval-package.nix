# The attributes nixos/package.nix hands to buildPythonApplication, as the builder would receive them, with
# the dependencies as names. `src` is left out: it needs the store. Used by tests/nix/test_flake_checks.py to
# rebuild the pytest command line that pytestCheckHook would run.
{ libPath }:
let
  lib = import libPath;
  names = [ "setuptools" "click" "kubernetes" "prometheus-client" "pyroute2" "pyyaml" "hypothesis" "pytestCheckHook" ];
  python3Packages = lib.genAttrs names (n: n) // { buildPythonApplication = attrs: attrs; };
in
builtins.removeAttrs (import ../../nixos/package.nix { inherit lib python3Packages; }) [ "src" ]
