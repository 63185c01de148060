{
  description = "l3lb: LoadBalancer Services for bare-metal Kubernetes in pure layer-3 networks, advertised by the host's FRR";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  # Wiring only: the package, the module and the VM test live in nixos/.
  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        # passthru.tests: the VM test, as nixpkgs packages carry their NixOS tests.
        l3lb = pkgs.callPackage ./nixos/package.nix { tests.vm = self.checks.${pkgs.stdenv.hostPlatform.system}.vm; };
        default = l3lb;
      });

      apps = forAll (pkgs: rec {
        l3lb = {
          type = "app";
          program = nixpkgs.lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.l3lb;
          meta.description = "The l3lb node agent and its status and check commands";
        };
        default = l3lb;
      });

      overlays.default = final: prev: { l3lb = final.callPackage ./nixos/package.nix { }; };

      # The module, with this flake's package as the default of services.l3lb.package (its own default
      # is pkgs.l3lb, as a module in nixpkgs would have it).
      nixosModules = rec {
        l3lb = { pkgs, lib, ... }: {
          imports = [ ./nixos/default.nix ];
          services.l3lb.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.l3lb;
        };
        default = l3lb;
      };

      checks = forAll (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.l3lb;
        vm = import ./nixos/tests/vm.nix { inherit pkgs; module = self.nixosModules.default; };
      });

      formatter = forAll (pkgs: pkgs.nixfmt-tree);

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.l3lb ];
          packages = with pkgs; [ python3Packages.pytest python3Packages.hypothesis ruff frr iproute2 socat openssl go ];
        };
      });
    };
}
