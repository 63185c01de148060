# Evaluates nixos/default.nix with nixpkgs' lib.evalModules against the NixOS option declarations in
# nixos-options.nix (typed as nixpkgs types them). It checks the module's own option types, defaults,
# assertions and wiring; it is not an evaluation of NixOS.
{ libPath, settings }:
let
  lib = import libPath;
  pkgs = import ./stub-pkgs.nix;
  evaluated = lib.evalModules {
    modules = [ (import ./nixos-options.nix { inherit lib; }) ../../nixos/default.nix { config = settings; } ];
    specialArgs = { inherit pkgs; };
  };
  c = evaluated.config;
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
in
# As in NixOS, failed assertions stop the evaluation before the configuration is used.
if failed != [ ] then { failedAssertions = failed; } else
{
  failedAssertions = [ ];
  unit = c.systemd.services.l3lb or null;
  path = c.systemd.paths.l3lb or null;
  k3sDisable = c.services.k3s.disable;
  frrConfig = c.services.frr.config;
  bgpd = c.services.frr.bgpd.enable;
  sysctl = c.boot.kernel.sysctl;
  kernelModules = c.boot.kernelModules;
  variables = c.environment.variables;
  firewall = c.networking.firewall.allowedTCPPorts;
}
