# Declarations of the NixOS options that the l3lb module and the VM test's nodes set, typed as nixpkgs
# declares them (file named beside each), so that lib.evalModules merges their definitions as NixOS would.
# Not NixOS itself: only the options these tests need. An option set by the module or a node but missing
# here fails the evaluation ("The option ... does not exist"), which is the point: add it, typed as in
# nixpkgs.
{ lib }:
let
  inherit (lib) mkOption types;
  opt = type: default: mkOption { inherit type default; };
  # nixos/modules/tasks/network-interfaces.nix: addrOpts and routeOpts
  addrOpts = v: types.submodule {
    options = {
      address = mkOption { type = types.str; };
      prefixLength = mkOption { type = types.addCheck types.int (n: n >= 0 && n <= (if v == 4 then 32 else 128)); };
    };
  };
  routeOpts = v: types.submodule {
    options = {
      address = mkOption { type = types.str; };
      prefixLength = mkOption { type = types.addCheck types.int (n: n >= 0 && n <= (if v == 4 then 32 else 128)); };
      type = opt (types.nullOr (types.enum [ "unicast" "local" "broadcast" "multicast" "unreachable" "blackhole" "prohibit" "throw" "nat" ])) "unicast";
      via = opt (types.nullOr types.str) null;
      options = opt (types.attrsOf types.str) { };
    };
  };
  interface = types.submodule {
    options = {
      ipv4.addresses = opt (types.listOf (addrOpts 4)) [ ];
      ipv6.addresses = opt (types.listOf (addrOpts 6)) [ ];
      ipv4.routes = opt (types.listOf (routeOpts 4)) [ ];
      ipv6.routes = opt (types.listOf (routeOpts 6)) [ ];
    };
  };
  # nixos/modules/config/sysctl.nix: every key but net.core.{r,w}mem_max merges with mergeOneOption after
  # filterOverrides, so two definitions at one priority stop the evaluation, even equal ones.
  sysctlOption = lib.mkOptionType {
    name = "sysctl option value";
    check = val:
      let checkType = x: lib.isBool x || lib.isString x || lib.isInt x || x == null;
      in checkType val || (val._type or "" == "override" && checkType val.content);
    merge = loc: defs: lib.mergeOneOption loc (lib.filterOverrides defs);
  };
  # nixos/modules/services/cluster/rancher (services.k3s.manifests): a file deployed by k3s.
  manifest = types.submodule {
    options = {
      enable = opt types.bool true;
      target = opt (types.nullOr types.str) null;
      source = opt (types.nullOr types.path) null;
      content = opt (types.nullOr (types.either types.attrs (types.listOf types.attrs))) null;
    };
  };
  # nixos/lib/systemd-unit-options.nix: the unit options the module uses; the rest of a unit as anything.
  unit = extra: types.submodule {
    freeformType = types.attrsOf types.anything;
    options = {
      description = opt types.str "";
      wantedBy = opt (types.listOf types.str) [ ];
      wants = opt (types.listOf types.str) [ ];
      after = opt (types.listOf types.str) [ ];
      requires = opt (types.listOf types.str) [ ];
      before = opt (types.listOf types.str) [ ];
      partOf = opt (types.listOf types.str) [ ];
      unitConfig = opt (types.attrsOf types.anything) { };
    } // extra;
  };
in
{
  options = {
    assertions = opt (types.listOf types.unspecified) [ ];
    warnings = opt (types.listOf types.str) [ ];
    environment.systemPackages = opt (types.listOf types.package) [ ];
    # nixos/modules/config/shells-environment.nix
    environment.variables = opt (types.attrsOf (types.oneOf [
      (types.listOf (types.oneOf [ types.int types.str types.path ]))
      types.int
      types.str
      types.path
    ])) { };
    systemd.services = opt (types.attrsOf (unit { serviceConfig = opt (types.attrsOf types.anything) { }; })) { };
    systemd.paths = opt (types.attrsOf (unit { pathConfig = opt (types.attrsOf types.anything) { }; })) { };
    boot.kernelModules = opt (types.listOf types.str) [ ];
    boot.kernel.sysctl = opt (types.attrsOf sysctlOption) { };
    networking.hostName = opt types.str "nixos";
    networking.firewall.enable = opt types.bool true;
    networking.firewall.allowedTCPPorts = opt (types.listOf types.port) [ ];
    networking.interfaces = opt (types.attrsOf interface) { };
    # nixos/lib/testing/network.nix
    networking.primaryIPAddress = opt types.str "";
    # nixos/modules/virtualisation/qemu-vm.nix
    virtualisation.vlans = opt (types.listOf types.ints.unsigned) [ 1 ];
    virtualisation.memorySize = opt types.ints.positive 1024;
    virtualisation.diskSize = opt (types.nullOr types.ints.positive) 1024;
    # nixos/modules/services/cluster/rancher (the k3s module)
    services.k3s = {
      enable = opt types.bool false;
      role = opt (types.enum [ "server" "agent" ]) "server";
      serverAddr = opt types.str "";
      tokenFile = opt (types.nullOr types.path) null;
      nodeName = opt (types.nullOr types.str) null;
      nodeIP = opt (types.nullOr types.str) null;
      disable = opt (types.listOf types.str) [ ];
      images = opt (types.listOf types.package) [ ];
      extraFlags = opt (types.either types.str (types.listOf types.str)) [ ];
      manifests = opt (types.attrsOf manifest) { };
    };
    # nixos/modules/services/networking/frr.nix
    services.frr.bgpd.enable = opt types.bool false;
    services.frr.config = opt types.lines "";
    services.frr.configFile = opt (types.nullOr types.path) null;
    services.frr.bfdd.enable = opt types.bool false;
  };
}
