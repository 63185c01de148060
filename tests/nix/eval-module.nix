# Evaluates nixos/default.nix with nixpkgs' lib.evalModules against stub declarations of the NixOS
# options it sets. A local aid, not an evaluation of NixOS: it checks the module's own option types,
# defaults, assertions and wiring. Needs a copy of nixpkgs' lib (nix-community/nixpkgs.lib), which is
# not part of this repository: tests/test_nix.py skips it when L3LB_NIXPKGS_LIB is unset.
{ libPath, settings }:
let
  lib = import libPath;
  inherit (lib) mkOption types;
  anything = mkOption { type = types.anything; default = null; };
  stubs = {
    options = {
      assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.anything; default = [ ]; };
      environment.variables = mkOption { type = types.attrsOf types.str; default = { }; };
      systemd.services = mkOption { type = types.attrsOf (types.attrsOf types.anything); default = { }; };
      boot.kernel.sysctl = mkOption { type = types.attrsOf types.anything; default = { }; };
      networking.hostName = mkOption { type = types.str; default = "host"; };
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      services.k3s = {
        enable = mkOption { type = types.bool; default = false; };
        role = mkOption { type = types.enum [ "server" "agent" ]; default = "server"; };
        nodeName = mkOption { type = types.nullOr types.str; default = null; };
        disable = mkOption { type = types.listOf types.str; default = [ ]; };
      };
      services.frr.bgpd.enable = mkOption { type = types.bool; default = false; };
      services.frr.config = mkOption { type = types.lines; default = ""; };
    };
  };
  pkgs = {
    callPackage = _: _: {
      type = "derivation"; name = "l3lb"; meta.mainProgram = "l3lb";
      outPath = "/nix/store/00000000000000000000000000000000-l3lb";
    };
  };
  evaluated = lib.evalModules {
    modules = [ ../../nixos/default.nix stubs { config = settings; } ];
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
  k3sDisable = c.services.k3s.disable;
  frrConfig = c.services.frr.config;
  bgpd = c.services.frr.bgpd.enable;
  sysctl = c.boot.kernel.sysctl;
  variables = c.environment.variables;
  firewall = c.networking.firewall.allowedTCPPorts;
}
