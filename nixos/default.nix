# NixOS module for l3lb: the node agent as a hardened systemd unit next to k3s, and optionally the FRR
# configuration that advertises the addresses it puts on lo.
#
#   imports = [ l3lb.nixosModules.default ];
#   services.l3lb = { enable = true; prefix = "10.0.100.0/24"; frr = { enable = true; asn = 65101; }; };
#
# Everything the module generates comes from small pure functions beside it (frr.nix, args.nix,
# service.nix, pools.nix, identity.nix) that use only builtins, so they are tested without nixpkgs.
#
# Needs NixOS 25.11 or later: it sets services.k3s.disable and reads services.k3s.nodeName, which the k3s
# module has since it moved to nixos/modules/services/cluster/rancher (nixpkgs PR #447847), and it appends
# to services.frr.config (integrated FRR configuration, 24.11 and later).
{ config, lib, pkgs, utils, ... }:
let
  cfg = config.services.l3lb;
  k3s = config.services.k3s;
  inherit (lib) mkOption mkEnableOption mkDefault types mkIf mkMerge literalExpression;
  onK3sServer = (k3s.enable or false) && (k3s.role or "server") == "server";
  identityKubeconfig = "/var/lib/l3lb/kubeconfig";

  # Named pools (services.l3lb.pools), or the one-pool shorthand services.l3lb.prefix.
  pools = import ./pools.nix { inherit (cfg) pools; };
  usePools = cfg.pools != { };
  poolsFile = pkgs.writeText "l3lb-pools.json" pools.json;
  prefixes = if usePools then lib.concatMap (p: p.prefixes ++ p.reserved) pools.ordered else cfg.prefix;
  # Set on the node itself, these stop FRR from advertising the route to its own eBGP peers (the lab shows it).
  stopping = [ "no-export" "no-advertise" "local-AS" "65535:65281" "65535:65282" "65535:65283" ];
  refusedCommunities = lib.concatMap (p: map (c: "${p.name}: ${c}") (lib.intersectLists stopping p.bgp.communities)) pools.ordered;
  poolPrefixes = if usePools then lib.concatMap (p: p.prefixes) pools.ordered else prefixes;
  cidr = p:
    let m = builtins.match "([0-9a-fA-F:.]+)/([0-9]+)" p;
    in m != null && (
      let len = lib.toInt (builtins.elemAt m 1); v6 = lib.hasInfix ":" p;
      in (if v6 then len <= 128 else len <= 32 && builtins.match "([0-9]+\\.){3}[0-9]+" (builtins.head m) != null));

  uplinks = if cfg.frr.uplinks.interfaces == [ ] then null else {
    inherit (cfg.frr.uplinks) interfaces remoteAs routerId accept timers bfd gracefulRestart;
  };

  k3sAgentDir = "/var/lib/rancher/k3s/agent";
  defaultKubeconfig =
    if !(k3s.enable or false) then null
    else if (k3s.role or "server") == "agent" then "${k3sAgentDir}/kubeproxy.kubeconfig"
    else if cfg.k3sIdentity.enable then identityKubeconfig
    else "/etc/rancher/k3s/k3s.yaml";
  # What k3s' kube-proxy kubeconfig on an agent refers to by path.
  k3sAgentFiles = map (f: "${k3sAgentDir}/${f}") [ "client-kube-proxy.crt" "client-kube-proxy.key" "server-ca.crt" ];
  onK3sAgent = (k3s.enable or false) && (k3s.role or "server") == "agent" && cfg.kubeconfig == defaultKubeconfig;
  credentialFiles = cfg.kubeconfigFiles;

  wantedBy = if (k3s.enable or false) then "k3s.service" else "multi-user.target";

  loopback = a: a == "127.0.0.1" || a == "::1" || a == "localhost";

  args = import ./args.nix {
    prefixes = if usePools then [ ] else prefixes;
    config = if usePools then "${poolsFile}" else null;
    inherit (cfg) nodeName interface loadBalancerClass addressLifetime logLevel extraArgs;
    inherit (cfg) drainSeconds announceHoldDown withdrawOnCordon;
    weightClasses = if cfg.weighted.enable then cfg.weighted.classes else 0;
    metrics = if cfg.metrics.enable then { inherit (cfg.metrics) address port; } else null;
  };
  # Every argument escaped for systemd (no %-specifier or $-variable expanded in them), then the one
  # specifier systemd must expand: %d, the credentials directory.
  execStart = "${lib.getExe cfg.package} ${utils.escapeSystemdExecArgs args} --kubeconfig %d/kubeconfig";
in
{
  options.services.l3lb = {
    enable = mkEnableOption "l3lb, LoadBalancer Service IPs on lo for FRR to advertise";

    # The flake's nixosModules.default sets this to the flake's own package (with mkDefault).
    package = lib.mkPackageOption pkgs "l3lb" { };

    prefix = mkOption {
      # One module may set a string, another a list: every definition becomes a list, then they merge.
      type = types.coercedTo types.str lib.toList (types.listOf types.str);
      default = [ ];
      example = [ "10.0.100.0/24" "fd00:100::/64" ];
      description = ''
        The prefix or prefixes l3lb owns (IPv4 and/or IPv6 CIDRs): the one-pool shorthand, for which every
        Service may get an address. Service IPs inside them are put on {option}`services.l3lb.interface`
        as /32 or /128; l3lb never touches an address outside them. Set this or {option}`services.l3lb.pools`.
      '';
    };

    pools = mkOption {
      default = { };
      example = literalExpression ''
        {
          internet = {
            prefixes = [ "203.0.113.0/26" "2001:db8:100::/64" ];
            autoAssign = false;
            nodeSelector.matchLabels."example.com/edge" = "true";
            bgp.communities = [ "65000:100" ];
          };
          internal = { prefixes = [ "10.0.100.0/24" ]; bgp.largeCommunities = [ "65000:1:200" ]; };
        }
      '';
      description = ''
        Named address pools, instead of {option}`services.l3lb.prefix`. A Service gets its addresses from
        the pool its `l3lb.io/address-pool` annotation names (or that holds the IP it requests), else from
        the first auto-assign pool (by priority, then name) that allows its namespace and labels. The
        agent reads them from a generated config file (`l3lb run --config`); the BGP attributes go into
        the FRR configuration when {option}`services.l3lb.frr.enable` is set.
      '';
      type = types.attrsOf (types.submodule {
        options = {
          prefixes = mkOption {
            type = types.listOf types.str;
            description = "The pool's CIDRs, IPv4 and/or IPv6.";
          };
          reserved = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "CIDRs inside the prefixes that are never allocated (requested IPs in them are).";
          };
          autoAssign = mkOption {
            type = types.bool;
            default = true;
            description = "Off: only Services that name the pool or request an IP in it get its addresses.";
          };
          namespaces = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "The namespaces whose Services may use the pool; empty: all.";
          };
          serviceSelector = mkOption {
            type = types.nullOr (types.attrsOf types.anything);
            default = null;
            example = { matchLabels.exposure = "internet"; };
            description = "A label selector (matchLabels, matchExpressions) on the Services that may use the pool.";
          };
          nodeSelector = mkOption {
            type = types.nullOr (types.attrsOf types.anything);
            default = null;
            example = { matchLabels."example.com/edge" = "true"; };
            description = "A label selector on the nodes that announce the pool's IPs; the others withdraw them.";
          };
          priority = mkOption {
            type = types.int;
            default = 100;
            description = "Auto-assignment takes pools by priority (lowest first), then by name.";
          };
          bgp = {
            communities = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "65000:100" "65000:666" ];
              description = ''
                Standard communities set on the pool's routes (FRR `set community`). Not no-export,
                no-advertise or local-AS: set where the node redistributes, they keep FRR from advertising
                the routes to the node's own eBGP peers; use a community your routers map to no-export.
              '';
            };
            largeCommunities = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "65000:1:100" ];
              description = "Large communities set on the pool's routes (FRR `set large-community`).";
            };
            asPathPrepend = mkOption {
              type = types.listOf types.ints.positive;
              default = [ ];
              example = [ 65101 65101 ];
              description = "AS numbers prepended to the pool's routes (FRR `set as-path prepend`).";
            };
          };
        };
      });
    };

    kubeconfig = mkOption {
      type = types.nullOr types.str;
      default = defaultKubeconfig;
      defaultText = literalExpression ''
        if services.k3s.role == "agent" then "/var/lib/rancher/k3s/agent/kubeproxy.kubeconfig"
        else if services.l3lb.k3sIdentity.enable then "/var/lib/l3lb/kubeconfig"
        else "/etc/rancher/k3s/k3s.yaml"   # null without k3s
      '';
      description = ''
        Kubeconfig of the agent, passed to the unit with LoadCredential. On a k3s server the agent's own
        least-privilege identity ({option}`services.l3lb.k3sIdentity.enable`); on a k3s agent, which has no
        CA key to mint one, the kube-proxy kubeconfig k3s writes: its identity (ClusterRole
        system:node-proxier) may watch Services, EndpointSlices and Nodes and write Events, so l3lb
        announces there but cannot publish status.
      '';
    };

    k3sIdentity.enable = mkOption {
      type = types.bool;
      default = onK3sServer;
      defaultText = literalExpression "services.k3s.enable && services.k3s.role == \"server\"";
      description = ''
        On a k3s server: deploy the agent's RBAC (deploy/rbac.yaml: list/watch Services, EndpointSlices and
        Nodes, patch services/status, Events, the allocator's Lease in kube-system) through
        {option}`services.k3s.manifests`, and give the agent a client certificate of its own (user
        `l3lb:<nodeName>`, group `l3lb:agents`) signed by k3s' client CA, instead of cluster-admin's
        k3s.yaml. `l3lb-identity.service` makes it before each start, anew when fewer than 90 of its 365
        days remain (as k3s renews its own client certificates).
      '';
    };

    kubeconfigFiles = mkOption {
      type = types.listOf types.str;
      default = lib.optionals onK3sAgent k3sAgentFiles;
      defaultText = literalExpression ''
        [ ".../agent/client-kube-proxy.crt" ".../agent/client-kube-proxy.key" ".../agent/server-ca.crt" ]
        # on a k3s agent with the default kubeconfig, else [ ]
      '';
      description = ''
        Files the kubeconfig refers to by path (certificates, keys). They are passed as credentials too,
        and l3lb reads them from the credentials directory under the same file name.
      '';
    };

    nodeName = mkOption {
      type = types.str;
      # k3s lower-cases the node name, given or from the hostname (GetHostnameAndIPs, pkg/util/net.go).
      default = lib.toLower (if (k3s.nodeName or null) != null then k3s.nodeName else config.networking.hostName);
      defaultText = literalExpression "lib.toLower (services.k3s.nodeName, else networking.hostName)";
      description = "This node's name in Kubernetes (the agent lower-cases it, as k3s does).";
    };

    interface = mkOption {
      type = types.str;
      default = "lo";
      description = "Interface that holds the Service addresses.";
    };

    loadBalancerClass = mkOption {
      type = types.str;
      default = "l3lb.io/l3lb";
      description = "Services of this loadBalancerClass are l3lb's, and so are Services without a class.";
    };

    addressLifetime = mkOption {
      type = types.ints.unsigned;
      default = 60;
      description = ''
        Seconds of valid lifetime of each address, renewed every third of it (0: permanent). If the agent
        dies, its addresses and so its routes expire instead of blackholing traffic.
      '';
    };

    drainSeconds = mkOption {
      type = types.ints.unsigned;
      default = 40;
      description = ''
        Seconds an IP is advertised with the GRACEFUL_SHUTDOWN community (RFC 8326) from the interface
        `l3lbdrain` before it is withdrawn, when it goes for a graceful reason: the agent stops (SIGTERM),
        the Node has the annotation `l3lb.io/drain: "true"`, the cluster autoscaler's
        ToBeDeletedByClusterAutoscaler taint, or its deletionTimestamp. Routers then move the traffic to
        the other paths before this one goes (an FRR router lowers LOCAL_PREF to 0 by itself on an eBGP
        session; others need an inbound policy). 0 withdraws at once. The default covers one eBGP hop that
        holds updates for a 30 s advertisement interval (Cisco IOS's default) with 10 s for the hops and
        FIBs behind it; raise it for more such hops. The unit's TimeoutStopSec is this plus 20, so a stop
        of l3lb (and of k3s, which stops it) takes this long; with {option}`services.l3lb.frr.enable` the
        FRR configuration gets the drain entry whenever this is not 0.
      '';
    };

    announceHoldDown = mkOption {
      type = types.ints.unsigned;
      default = 0;
      example = 10;
      description = ''
        Seconds a Service's reason to announce (ready endpoints) must last before its IP is announced, so
        that a crash-looping pod does not make every router recompute at each readiness flip; a Service's
        annotation `l3lb.io/announce-hold-down` (a duration, `10s`) says otherwise for it. Withdrawals never
        wait; an IP the node already holds is not held down.
      '';
    };

    withdrawOnCordon = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Withdraw from cordoned nodes (l3lb's earlier behaviour). Off by default: a cordon stops new pods,
        not traffic, as for Kubernetes' own load balancers since 1.19 (kubernetes/kubernetes#90823); MetalLB
        reverted the same withdrawal (metallb/metallb#2715) after it cut DaemonSet ingress off. To move
        traffic off a node, annotate it `l3lb.io/drain=true`.
      '';
    };

    metrics = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Serve Prometheus metrics, /healthz and /readyz.";
      };
      address = mkOption {
        type = types.str;
        default = "127.0.0.1";
        description = "Address the metrics listen on.";
      };
      port = mkOption {
        type = types.port;
        default = 9655;
        description = "Port of the metrics.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the metrics port in the firewall.";
      };
    };

    logLevel = mkOption {
      type = types.enum [ "debug" "info" "warning" "error" ];
      default = "info";
      description = "Log level.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--no-default-class" ];
      description = "Further arguments of `l3lb run`.";
    };

    allowedIPs = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = if (k3s.enable or false) && cfg.kubeconfig == defaultKubeconfig && loopback cfg.metrics.address
        then [ "localhost" ] else null;
      defaultText = literalExpression ''[ "localhost" ] with k3s's own kubeconfig and local metrics, else null'';
      description = ''
        When set, the only addresses the agent may talk to (systemd IPAddressAllow). k3s kubeconfigs point
        to the apiserver (server) or its local proxy (agent) on localhost.
      '';
    };

    disableServiceLB = mkOption {
      type = types.bool;
      default = k3s.enable or false;
      defaultText = literalExpression "services.k3s.enable";
      description = "Add servicelb to services.k3s.disable on k3s servers, so k3s' ServiceLB does not fight l3lb.";
    };

    arpSysctls = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Set net.ipv4.conf.all.arp_ignore = 1 and arp_announce = 2 (with mkDefault: a value of your own
        wins), so addresses on lo never answer ARP on a LAN.
      '';
    };

    weighted = {
      enable = mkEnableOption ''
        weighted anycast: each Local Service's IP goes on the interface of its weight class (l3lbw1 ...
        l3lbwN, by its local ready endpoints), and the FRR configuration tags each class with the
        link-bandwidth extended community, so routers weight their next hops by it'';
      classes = mkOption {
        type = types.ints.between 1 16;
        default = 4;
        description = "The number of weight classes: a node with more local ready endpoints than this counts as this many.";
      };
    };

    frr = {
      enable = mkEnableOption "the FRR configuration that advertises l3lb's addresses (enables bgpd)";
      asn = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 65101;
        description = "This node's BGP AS number: the `router bgp` the redistribution goes under.";
      };
      workQueue = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = 0;
        description = ''
          zebra's RIB work-queue hold in milliseconds (`zebra work-queue N`); null keeps FRR's 10. zebra
          holds every route change that long before it redistributes it, so 0 takes 10 ms off every
          announcement and withdrawal at the routers (`bench/peers.py`), for some CPU when many routes change
          at once: a node that learns large tables from its uplinks may want FRR's default back.
        '';
      };
      uplinks = {
        interfaces = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "eth1" "eth2" ];
          description = ''
            Interfaces to peer BGP unnumbered on: when set, the module renders this node's BGP sessions too
            (under the same `router bgp`), complete for FRR's `traditional` profile: a policy each way per
            address family (`bgp ebgp-requires-policy`), IPv6 unicast activated with IPv6 prefixes, timers
            3/9, BFD and graceful restart. Empty: your own FRR config peers.
          '';
        };
        remoteAs = mkOption {
          type = types.either (types.enum [ "external" "internal" ]) types.ints.positive;
          default = "external";
          description = "The uplinks' AS: `external`, `internal` or a number.";
        };
        routerId = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "10.255.0.1";
          description = ''
            `bgp router-id`. Set it (here or in your own config): otherwise bgpd takes zebra's, which follows
            the highest address on lo and can be a Service IP.
          '';
        };
        accept = mkOption {
          type = types.enum [ "all" "default" "none" ];
          default = "all";
          description = ''
            What the node takes in from its uplinks (never another node's Service IP): everything, only the
            default routes, or nothing.
          '';
        };
        timers = {
          keepalive = mkOption { type = types.ints.positive; default = 3; description = "BGP keepalive, seconds."; };
          hold = mkOption {
            type = types.ints.positive;
            default = 9;
            description = "BGP hold time, seconds: without BFD, how long a dead node keeps its share of traffic.";
          };
        };
        bfd = {
          enable = mkOption {
            type = types.bool;
            default = true;
            description = "BFD on the uplinks (turns on bfdd); the routers need BFD on these sessions too.";
          };
          detectMultiplier = mkOption { type = types.ints.positive; default = 3; description = "BFD detect multiplier."; };
          receiveInterval = mkOption { type = types.ints.positive; default = 100; description = "BFD receive interval, ms."; };
          transmitInterval = mkOption { type = types.ints.positive; default = 100; description = "BFD transmit interval, ms."; };
        };
        gracefulRestart = {
          enable = mkOption {
            type = types.bool;
            default = cfg.frr.uplinks.bfd.enable;
            defaultText = literalExpression "services.l3lb.frr.uplinks.bfd.enable";
            description = ''
              Graceful restart with preserve-fw-state: the routers keep this node's routes while its bgpd
              restarts. Only with BFD by default: a hold-timer expiry enters graceful restart, so without BFD
              a dead node would keep its routes for hold + restartTime; BFD down flushes at once.
            '';
          };
          restartTime = mkOption {
            type = types.ints.positive;
            default = 30;
            description = "Seconds the routers keep the routes of a restarting bgpd.";
          };
        };
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = (cfg.prefix == [ ]) != (cfg.pools == { });
          message = "services.l3lb: set either prefix (one pool) or pools (named pools), not both and not neither.";
        }
        {
          assertion = lib.all cidr prefixes;
          message = "services.l3lb.${if usePools then "pools.<name>.prefixes and reserved" else "prefix"} must be IPv4 or IPv6 CIDRs like \"10.0.100.0/24\"; got ${builtins.toJSON prefixes}.";
        }
        {
          assertion = refusedCommunities == [ ];
          message = "services.l3lb.pools.<name>.bgp.communities: ${lib.concatStringsSep ", " refusedCommunities}: set where l3lb redistributes, this community keeps FRR from advertising the pool's routes to the node's own eBGP peers. Tag the pool with a community your routers map to no-export instead.";
        }
        {
          assertion = cfg.kubeconfig != null;
          message = "services.l3lb.kubeconfig has no default without services.k3s: set it to the agent's kubeconfig.";
        }
        {
          assertion = !cfg.frr.enable || cfg.frr.asn != null;
          message = "services.l3lb.frr.enable needs services.l3lb.frr.asn: this node's BGP AS number (the `router bgp` of your FRR config).";
        }
        {
          assertion = !cfg.frr.enable || (config.services.frr.configFile or null) == null;
          message = "services.l3lb.frr.enable appends to services.frr.config, which services.frr.configFile replaces: the redistribution would silently be missing. Unset configFile (put your FRR config in services.frr.config) or turn frr.enable off and add the l3lb lines to your file yourself.";
        }
        {
          assertion = !cfg.k3sIdentity.enable || onK3sServer;
          message = "services.l3lb.k3sIdentity needs a k3s server (services.k3s.enable, role \"server\"): only a server has the client CA that signs the agent's certificate.";
        }
      ];

      environment.systemPackages = [ cfg.package ];
      # `l3lb status` and `l3lb check` in a root shell see the agent's settings (mkDefault: yours win).
      environment.variables = lib.mapAttrs (_: mkDefault) ((if usePools then { L3LB_CONFIG = "${poolsFile}"; } else {
        L3LB_PREFIX = lib.concatStringsSep "," prefixes;
      }) // {
        L3LB_NODE_NAME = cfg.nodeName;
        L3LB_INTERFACE = cfg.interface;
        L3LB_LOAD_BALANCER_CLASS = cfg.loadBalancerClass;
        L3LB_DRAIN_SECONDS = toString cfg.drainSeconds;
      } // lib.optionalAttrs (cfg.kubeconfig != null) { L3LB_KUBECONFIG = cfg.kubeconfig; }
      // lib.optionalAttrs cfg.withdrawOnCordon { L3LB_WITHDRAW_ON_CORDON = "1"; }
      // lib.optionalAttrs cfg.metrics.enable { L3LB_METRICS_ADDRESS = "${cfg.metrics.address}:${toString cfg.metrics.port}"; });

      systemd.services.l3lb = {
        description = "l3lb: LoadBalancer Service IPs on ${cfg.interface}";
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ] ++ lib.optional (k3s.enable or false) "k3s.service";
        # Stopped and restarted with k3s, so its addresses are withdrawn when k3s stops.
        partOf = lib.optional (k3s.enable or false) "k3s.service";
        wantedBy = [ wantedBy ];
        # On a k3s agent, k3s.service is Type=exec and writes the kubeconfig some seconds after it started.
        # Until the file exists a start is skipped (an unmet condition, not a failure: LoadCredential= of a
        # missing file would fail the unit), and l3lb.path starts the unit when the file appears.
        unitConfig.ConditionPathExists = cfg.kubeconfig;
        serviceConfig = import ./service.nix {
          inherit execStart;
          credentials = [ "kubeconfig:${cfg.kubeconfig}" ]
            ++ map (f: "${baseNameOf f}:${f}") credentialFiles;
          inherit (cfg) allowedIPs drainSeconds;
        };
      };

      # PathChanged=, not PathExists=: systemd re-checks a path unit's condition whenever the unit it
      # triggers stops, so with PathExists= `systemctl stop l3lb` would start l3lb again at once.
      # PathChanged= fires only on a change (the file written or moved into place), never on a re-check.
      systemd.paths.l3lb = {
        description = "Start l3lb when its kubeconfig appears";
        wantedBy = [ wantedBy ];
        # Watching before k3s starts, so a kubeconfig written right after is not missed.
        before = lib.optional (k3s.enable or false) "k3s.service";
        pathConfig = { PathChanged = cfg.kubeconfig; Unit = "l3lb.service"; };
      };

      networking.firewall.allowedTCPPorts = lib.optional (cfg.metrics.enable && cfg.metrics.openFirewall) cfg.metrics.port;
    }

    # The class interfaces and l3lbdrain are dummies, made by the agent; load the driver at boot (the unit
    # may not).
    (mkIf (cfg.weighted.enable || cfg.drainSeconds > 0) { boot.kernelModules = [ "dummy" ]; })

    # mkDefault: sysctl values merge with mergeOneOption (nixos/modules/config/sysctl.nix), so a second
    # plain definition of the same key, even an equal one, would stop the evaluation.
    (mkIf cfg.arpSysctls {
      boot.kernel.sysctl = {
        "net.ipv4.conf.all.arp_ignore" = mkDefault 1;
        "net.ipv4.conf.all.arp_announce" = mkDefault 2;
      };
    })

    (mkIf cfg.k3sIdentity.enable {
      services.k3s.manifests.l3lb-rbac.source = ../deploy/rbac.yaml;
      systemd.services.l3lb-identity = {
        description = "l3lb: the agent's least-privilege client certificate, signed by k3s' client CA";
        after = [ "k3s.service" ];
        partOf = [ "k3s.service" ];
        serviceConfig = {
          Type = "oneshot";
          ExecStart = pkgs.writeShellScript "l3lb-identity" (import ./identity.nix {
            openssl = lib.getExe pkgs.openssl;
            user = "l3lb:${cfg.nodeName}";
          });
        };
      };
      systemd.services.l3lb = {
        requires = [ "l3lb-identity.service" ];
        after = [ "l3lb-identity.service" ];
      };
    })

    (mkIf (cfg.disableServiceLB && (k3s.enable or false) && (k3s.role or "server") == "server") {
      services.k3s.disable = [ "servicelb" ];
    })

    (mkIf cfg.frr.enable {
      services.frr.bgpd.enable = true;
      services.frr.bfdd.enable = mkIf (uplinks != null && cfg.frr.uplinks.bfd.enable) true;
      services.frr.config = lib.mkAfter (import ./frr.nix {
        prefixes = poolPrefixes;
        pools = if usePools then pools.ordered else [ ];
        inherit (cfg) interface;
        inherit uplinks;
        inherit (cfg.frr) asn workQueue;
        classes = if cfg.weighted.enable then cfg.weighted.classes else 0;
        drain = cfg.drainSeconds > 0;
      });
      # Stopped before FRR (units stop in the reverse order of After=): the withdrawals go out while bgpd
      # still runs. Otherwise graceful restart would keep a stopping node's routes for the restart time.
      systemd.services.l3lb.after = [ "frr.service" ];
      warnings = lib.optional (uplinks != null && cfg.frr.uplinks.routerId == null)
        "services.l3lb.frr.uplinks.routerId is not set: unless your own FRR config sets `bgp router-id`, bgpd takes zebra's, which follows the highest address on lo and can be a Service IP.";
    })
  ]);
}
