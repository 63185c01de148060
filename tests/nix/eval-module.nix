# Evaluates nixos/default.nix with nixpkgs' lib.evalModules against the NixOS option declarations in
# nixos-options.nix (typed as nixpkgs types them). It checks the module's own option types, defaults,
# assertions and wiring; it is not an evaluation of NixOS. `settings`: one module's config, or a list of
# them (several modules setting the same options, as a user's and a hardening module's would).
{ libPath, settings }:
let
  lib = import libPath;
  pkgs = import ./stub-pkgs.nix;
  evaluated = lib.evalModules {
    modules = [ (import ./nixos-options.nix { inherit lib; }) ../../nixos/default.nix ]
      ++ map (s: { config = s; }) (if builtins.isList settings then settings else [ settings ]);
    specialArgs = { inherit pkgs; utils = import ./utils.nix; };
  };
  c = evaluated.config;
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
in
# As in NixOS, failed assertions stop the evaluation before the configuration is used.
if failed != [ ] then { failedAssertions = failed; } else
{
  failedAssertions = [ ];
  unit = c.systemd.services.l3lb or null;
  identity = c.systemd.services.l3lb-identity or null;
  manifests = builtins.mapAttrs (_: m: { source = toString m.source; }) c.services.k3s.manifests;
  nodeName = c.services.l3lb.nodeName;
  package = c.services.l3lb.package.name;
  path = c.systemd.paths.l3lb or null;
  k3sDisable = c.services.k3s.disable;
  frrConfig = c.services.frr.config;
  bgpd = c.services.frr.bgpd.enable;
  bfdd = c.services.frr.bfdd.enable;
  warnings = c.warnings;
  sysctl = c.boot.kernel.sysctl;
  kernelModules = c.boot.kernelModules;
  variables = c.environment.variables;
  firewall = c.networking.firewall.allowedTCPPorts;
}
