# The machines of the VM test (vm.nix), as node modules for the NixOS test framework. Kept apart from
# vm.nix so that tests/nix/eval-vm-nodes.nix evaluates exactly these with nixpkgs' lib and a model of the
# framework's addressing.
#
# Networks (virtualisation.vlans; the framework makes the Nth entry ethN):
#   vlan 1: server eth2 -- router eth1      BGP unnumbered (IPv6 link-local only)
#   vlan 2: agent eth2  -- router eth2      BGP unnumbered
#   vlan 3: client eth1 -- router eth3      the client's network, announced by the router to the nodes
#   vlan 4: server eth1 -- agent eth1       the cluster network (k3s, flannel)
# No node sets an address of its own: the framework numbers the nodes in alphabetical order (agent 1,
# client 2, router 3, server 4) and gives every VLAN interface 192.168.<vlan>.<number>/24 by itself, as a
# definition that an address set here would be added to, not replace. Nodes read each other's from
# `nodes`, the framework's module argument.
{ pkgs, module, prefix, pauseImage, echoImage }:
let
  token = pkgs.writeText "k3s-token" "l3lb-vm-test-token";
  addressOf = node: interface: (builtins.head node.networking.interfaces.${interface}.ipv4.addresses).address;
  network24 = address: "${builtins.head (builtins.match "([0-9]+[.][0-9]+[.][0-9]+)[.][0-9]+" address)}.0/24";

  # eth1: the cluster network (primaryIPAddress); eth2: the uplink to the router.
  node = { role, asn, uplinkVlan }: { config, nodes, ... }: {
    imports = [ module ];
    virtualisation = { memorySize = 2048; diskSize = 4096; vlans = [ 4 uplinkVlan ]; };
    networking.firewall.enable = false;
    services.k3s = {
      enable = true;
      inherit role;
      tokenFile = token;
      nodeIP = config.networking.primaryIPAddress;
      images = [ pauseImage echoImage ];
      extraFlags = [ "--pause-image test.local/pause:local" "--flannel-iface eth1" ];
    } // (if role == "server" then {
      disable = [ "coredns" "local-storage" "metrics-server" "traefik" ];
    } else {
      serverAddr = "https://${nodes.server.networking.primaryIPAddress}:6443";
    });
    # The node's BGP is the module's: its uplink rendered with policies for FRR's traditional profile
    # (ebgp-requires-policy stays on), BFD and graceful restart; nothing hand-written.
    services.l3lb = {
      enable = true;
      inherit prefix;
      addressLifetime = 20;
      drainSeconds = 10; # the script watches a drain end, and stops l3lb
      logLevel = "debug"; # "handled ..." lines: what the script waits for before it asserts an absence
      frr = {
        enable = true;
        inherit asn;
        uplinks = { interfaces = [ "eth2" ]; routerId = "10.255.0.${toString (asn - 65000)}"; };
      };
    };
  };
in
{
  router = { nodes, ... }: {
    virtualisation.vlans = [ 1 2 3 ];
    networking.firewall.enable = false;
    boot.kernel.sysctl = { "net.ipv4.ip_forward" = 1; "net.ipv4.fib_multipath_hash_policy" = 1; };
    services.frr = {
      bgpd.enable = true;
      bfdd.enable = true;
      config = ''
        ip prefix-list FROM-NODES seq 10 permit ${prefix} ge 32
        ip prefix-list TO-NODES seq 10 permit ${network24 (addressOf nodes.client "eth1")}
        route-map FROM-NODES permit 10
         match ip address prefix-list FROM-NODES
        exit
        route-map TO-NODES permit 10
         match ip address prefix-list TO-NODES
        exit
        bfd
         profile NODES
          receive-interval 100
          transmit-interval 100
         exit
        exit
        router bgp 65000
         bgp router-id 10.255.0.1
         bgp bestpath as-path multipath-relax
         neighbor NODES peer-group
         neighbor NODES remote-as external
         neighbor NODES bfd profile NODES
         neighbor eth1 interface peer-group NODES
         neighbor eth2 interface peer-group NODES
         address-family ipv4 unicast
          redistribute connected route-map TO-NODES
          neighbor NODES route-map FROM-NODES in
          neighbor NODES route-map TO-NODES out
          maximum-paths 16
         exit-address-family
        exit
      '';
    };
  };
  server = node { role = "server"; asn = 65101; uplinkVlan = 1; };
  agent = node { role = "agent"; asn = 65102; uplinkVlan = 2; };
  # eth0, the test driver's network, holds the default route: the route to the Service prefix is explicit.
  client = { nodes, ... }: {
    virtualisation.vlans = [ 3 ];
    networking.firewall.enable = false;
    networking.interfaces.eth1.ipv4.routes = [
      {
        address = builtins.head (builtins.match "(.*)/[0-9]+" prefix);
        prefixLength = builtins.fromJSON (builtins.head (builtins.match ".*/([0-9]+)" prefix));
        via = addressOf nodes.router "eth3";
      }
    ];
    environment.systemPackages = [ pkgs.curl ];
  };
}
