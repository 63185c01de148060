# The whole path in VMs: a router running FRR, a k3s server and a k3s agent each with FRR peering BGP
# unnumbered to the router and l3lb through the module, and a client behind the router (nodes.nix).
# Run with `nix flake check` (or `nix build .#checks.x86_64-linux.vm`) on a machine with Nix and KVM.
{ pkgs, module }:
let
  prefix = "10.0.100.0/24";
  vip = "10.0.100.5";

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
in
pkgs.testers.runNixOSTest {
  name = "l3lb";
  nodes = import ./nodes.nix { inherit pkgs module prefix pauseImage echoImage; };
  testScript = ''
    VIP = "${vip}"
  '' + builtins.readFile ./vm_test.py;
}
