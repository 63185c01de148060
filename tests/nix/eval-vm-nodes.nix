# Evaluates the VM test's nodes (nixos/tests/nodes.nix) the way the NixOS test framework would put them
# together, with nixpkgs' lib.evalModules, the option declarations of nixos-options.nix, and a model of the
# framework's addressing (nixos/lib/testing/network.nix):
# - nodes are numbered 1, 2, ... in alphabetical order of their names;
# - the Nth entry of virtualisation.vlans becomes ethN, with 192.168.<vlan>.<number>/24 defined by the
#   framework itself as a plain definition, so that a node's own addresses are added to it;
# - and 2001:db8:<vlan>::<number>/64 the same way;
# - networking.primaryIPAddress is the address of the first VLAN interface in attribute-name order; the
#   host name defaults (mkDefault) to the node's name;
# - every node module gets `nodes` (the other nodes' configurations) as a module argument.
# Returns, per node, what the tests check: interfaces, addresses, routes, k3s, FRR and l3lb settings.
{ libPath }:
let
  lib = import libPath;
  pkgs = import ./stub-pkgs.nix;
  prefix = "10.0.100.0/24";
  modules = import ../../nixos/tests/nodes.nix {
    inherit pkgs prefix;
    module = ../../nixos/default.nix;
    pauseImage = pkgs.drv "pause-image";
    echoImage = pkgs.drv "echo-image";
  };
  names = builtins.attrNames modules; # sorted, as the framework sorts them
  number = name: lib.lists.findFirstIndex (n: n == name) null names + 1;

  framework = name: { config, ... }:
    let
      n = toString (number name);
      interfaces = lib.imap1 (i: vlan: { name = "eth${toString i}"; inherit vlan; }) config.virtualisation.vlans;
      first = builtins.head (lib.sort (a: b: a.name < b.name) interfaces); # attribute-name order
    in
    {
      networking.hostName = lib.mkDefault name;
      networking.interfaces = builtins.listToAttrs (map
        (i: {
          inherit (i) name;
          value.ipv4.addresses = [ { address = "192.168.${toString i.vlan}.${n}"; prefixLength = 24; } ];
          value.ipv6.addresses = [ { address = "2001:db8:${toString i.vlan}::${n}"; prefixLength = 64; } ];
        })
        interfaces);
      networking.primaryIPAddress = "192.168.${toString first.vlan}.${n}";
    };

  evalNode = name: lib.evalModules {
    modules = [
      (import ./nixos-options.nix { inherit lib; })
      (framework name)
      modules.${name}
      { _module.args.nodes = nodes; }
    ];
    specialArgs = { inherit pkgs; utils = import ./utils.nix; };
  };
  nodes = builtins.mapAttrs (name: _: (evalNode name).config) modules;

  summary = name: c: {
    number = number name;
    vlans = c.virtualisation.vlans;
    interfaces = builtins.mapAttrs (_: i: {
      addresses = map (a: "${a.address}/${toString a.prefixLength}") i.ipv4.addresses;
      addresses6 = map (a: "${a.address}/${toString a.prefixLength}") i.ipv6.addresses;
      routes = map (r: { dst = "${r.address}/${toString r.prefixLength}"; inherit (r) via; }) i.ipv4.routes;
    }) c.networking.interfaces;
    primaryIPAddress = c.networking.primaryIPAddress;
    k3s = if c.services.k3s.enable then { inherit (c.services.k3s) role serverAddr nodeIP extraFlags; } else null;
    frrConfig = c.services.frr.config;
    l3lb = if c.services.l3lb.enable or false then {
      inherit prefix;
      inherit (c.services.l3lb.frr) asn;
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
      unit = c.systemd.services.l3lb;
      path = c.systemd.paths.l3lb;
    } else null;
  };
in
builtins.mapAttrs summary nodes
