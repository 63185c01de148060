# The l3lb package: a Python application built from pyproject.toml (setuptools backend). The check phase
# runs the tests that need neither root nor a control plane (unit and property tests).
{ lib, python3Packages }:
let
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);
in
python3Packages.buildPythonApplication {
  pname = "l3lb";
  inherit (pyproject.project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../pyproject.toml ../README.md ../l3lb ../tests ../deploy ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = with python3Packages; [
    click
    kubernetes
    prometheus-client
    pyroute2
    pyyaml
  ];

  nativeCheckInputs = with python3Packages; [
    hypothesis
    pytestCheckHook
  ];
  pytestFlags = [ "-m" "not cluster and not root" "-p" "no:cacheprovider" ];
  # They evaluate the Nix files with nix-instantiate and read the flake: not possible inside a build.
  disabledTestPaths = [ "tests/test_nix.py" ];

  pythonImportsCheck = [ "l3lb" ];

  meta = {
    description = "LoadBalancer Services for bare-metal Kubernetes in pure layer-3 networks, advertised by the host's FRR";
    license = lib.licenses.asl20;
    mainProgram = "l3lb";
    platforms = lib.platforms.linux;
  };
}
