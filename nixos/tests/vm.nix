# The whole path in VMs: a router running FRR, a k3s server and a k3s agent each with FRR peering BGP
# unnumbered to the router and l3lb through the module, and a client behind the router.
# Run with `nix flake check` (or `nix build .#checks.x86_64-linux.vm`) on a machine with Nix and KVM.
{ pkgs, module }:
let
  prefix = "10.0.100.0/24";
  vip = "10.0.100.5";
  token = pkgs.writeText "k3s-token" "l3lb-vm-test-token";

  # No image pulls in the sandbox: a pause image and an HTTP server answering with its node's name.
  imageEnv = pkgs.buildEnv { name = "l3lb-test-image-env"; paths = with pkgs; [ tini busybox ]; };
  pauseImage = pkgs.dockerTools.buildImage {
    name = "test.local/pause";
    tag = "local";
    copyToRoot = imageEnv;
    config.Entrypoint = [ "/bin/tini" "--" "/bin/sleep" "inf" ];
  };
  echoImage = pkgs.dockerTools.buildImage {
    name = "test.local/echo";
    tag = "local";
    copyToRoot = imageEnv;
    config.Entrypoint = [ "/bin/sh" "-c" "mkdir -p /www && echo $NODE_NAME > /www/index.html && exec httpd -f -p 8080 -h /www" ];
  };

  routerFrr = ''
    ip prefix-list FROM-NODES seq 10 permit ${prefix} ge 32
    ip prefix-list TO-NODES seq 10 permit 192.0.2.0/24
    route-map FROM-NODES permit 10
     match ip address prefix-list FROM-NODES
    exit
    route-map TO-NODES permit 10
     match ip address prefix-list TO-NODES
    exit
    router bgp 65000
     bgp router-id 10.255.0.1
     no bgp ebgp-requires-policy
     bgp bestpath as-path multipath-relax
     neighbor NODES peer-group
     neighbor NODES remote-as external
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

  # eth1: the uplink to the router (BGP unnumbered); eth2: the cluster network between the nodes.
  node = { role, asn, clusterIP }: { config, ... }: {
    imports = [ module ];
    virtualisation = { memorySize = 2048; diskSize = 4096; vlans = [ (if role == "server" then 1 else 2) 4 ]; };
    networking.firewall.enable = false;
    networking.interfaces.eth2.ipv4.addresses = [ { address = clusterIP; prefixLength = 24; } ];
    services.k3s = {
      enable = true;
      inherit role;
      tokenFile = token;
      nodeIP = clusterIP;
      images = [ pauseImage echoImage ];
      extraFlags = [ "--pause-image test.local/pause:local" "--flannel-iface eth2" ];
    } // (if role == "server" then {
      disable = [ "coredns" "local-storage" "metrics-server" "traefik" ];
    } else {
      serverAddr = "https://192.168.4.1:6443";
    });
    services.frr.config = ''
      router bgp ${toString asn}
       bgp router-id 10.255.0.${toString (asn - 65000)}
       no bgp ebgp-requires-policy
       neighbor eth1 interface remote-as external
      exit
    '';
    services.l3lb = {
      enable = true;
      prefix = prefix;
      addressLifetime = 20;
      frr = { enable = true; inherit asn; };
    };
  };
in
pkgs.testers.runNixOSTest {
  name = "l3lb";
  nodes = {
    router = {
      virtualisation.vlans = [ 1 2 3 ];
      networking.firewall.enable = false;
      networking.interfaces.eth3.ipv4.addresses = [ { address = "192.0.2.1"; prefixLength = 24; } ];
      boot.kernel.sysctl = { "net.ipv4.ip_forward" = 1; "net.ipv4.fib_multipath_hash_policy" = 1; };
      services.frr = { bgpd.enable = true; config = routerFrr; };
    };
    server = node { role = "server"; asn = 65101; clusterIP = "192.168.4.1"; };
    agent = node { role = "agent"; asn = 65102; clusterIP = "192.168.4.2"; };
    client = {
      virtualisation.vlans = [ 3 ];
      networking.interfaces.eth1.ipv4.addresses = [ { address = "192.0.2.2"; prefixLength = 24; } ];
      networking.defaultGateway = "192.0.2.1";
      environment.systemPackages = [ pkgs.curl ];
    };
  };
  testScript = ''
    VIP = "${vip}"
  '' + builtins.readFile ./vm_test.py;
}
