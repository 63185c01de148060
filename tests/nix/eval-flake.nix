# Evaluates flake.nix's outputs as a user's flake would, with nixpkgs' lib and placeholder packages for
# nixpkgs (stub-pkgs.nix, but without an `l3lb` of its own): the module from nixosModules.default, as
# `imports = [ l3lb.nixosModules.default ]` takes it, evaluated against the NixOS option declarations.
{ libPath }:
let
  lib = import libPath;
  system = "x86_64-linux";
  stub = import ./stub-pkgs.nix;
  # buildPythonApplication as a placeholder derivation that keeps its attributes (passthru among them)
  python3Packages = lib.genAttrs [ "setuptools" "click" "kubernetes" "prometheus-client" "pyroute2" "pyyaml" "hypothesis" "pytestCheckHook" ] (n: n)
    // { buildPythonApplication = attrs: stub.drv attrs.pname // { inherit (attrs) passthru; meta = attrs.meta // { mainProgram = "l3lb"; }; }; };
  pkgs = builtins.removeAttrs stub [ "l3lb" ] // {
    inherit lib;
    callPackage = path: args: import path ({ inherit lib python3Packages; } // args);
    stdenv.hostPlatform.system = system;
    testers.runNixOSTest = test: { type = "derivation"; name = "vm-test-${test.name}"; };
  };
  nixpkgs = { inherit lib; legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs); };
  self = (import ../../flake.nix).outputs { inherit self nixpkgs; };
  node = lib.evalModules {
    modules = [
      (import ./nixos-options.nix { inherit lib; })
      self.nixosModules.default
      { services.l3lb = { enable = true; prefix = "10.0.100.0/24"; kubeconfig = "/k"; }; }
    ];
    specialArgs = { inherit pkgs; utils = import ./utils.nix; };
  };
in
{
  package = node.config.services.l3lb.package.name;
  samePackage = node.config.services.l3lb.package == self.packages.${system}.default;
  app = self.apps.${system}.default.program;
  passthruTests = builtins.attrNames (self.packages.${system}.l3lb.passthru.tests or { });
}
