# The l3lb package: a Python application built from pyproject.toml (setuptools backend). The check phase
# runs the unit and property tests; `tests` (the flake passes its VM test) become passthru.tests.
{ lib, python3Packages, tests ? { } }:
let
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);
in
python3Packages.buildPythonApplication {
  pname = "l3lb";
  inherit (pyproject.project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../pyproject.toml ../README.md ../LICENSE ../l3lb ../tests ../deploy ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = with python3Packages; [
    click
    kubernetes
    prometheus-client
    pyroute2
    pyyaml
  ];

  # A plain `pytest`: the tests that need root, the control plane binaries, FRR or nix-instantiate skip
  # themselves inside the build sandbox (tests/conftest.py says why), so the check phase needs no flags.
  # A flag list would reach the hook space-joined and be split again (no __structuredAttrs):
  # tests/nix/test_nix.py fails on any list element with a space.
  nativeCheckInputs = with python3Packages; [
    hypothesis
    pytestCheckHook
  ];

  pythonImportsCheck = [ "l3lb" ];

  passthru = { inherit tests; };

  meta = {
    description = "LoadBalancer Services for bare-metal Kubernetes in pure layer-3 networks, advertised by the host's FRR";
    license = lib.licenses.asl20;
    mainProgram = "l3lb";
    platforms = lib.platforms.linux;
  };
}
