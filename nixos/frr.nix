# The FRR configuration l3lb needs on a node: a prefix-list per address family that matches only
# host routes (/32, /128) inside l3lb's prefixes, a route-map over it, and `redistribute connected`
# through that route-map under `router bgp ASN`. Appended to services.frr.config by the module; a
# second `router bgp ASN` block with the same ASN merges into the user's own.
#
# Weighted anycast (`classes` > 0): the agent puts a Local Service's IP on the interface of its weight
# class (`l3lbw1` ... `l3lbwN`), and the route-map has one entry per class that matches that interface and
# sets the link-bandwidth extended community to the class's weight; addresses on `interface` (lo) go out
# without it. A router that receives the community on every multipath installs weighted next hops.
#
# Drain (`drain` = true): the agent moves an IP it withdraws gracefully (a stop, the l3lb.io/drain
# annotation, the autoscaler's taint, the Node's deletion) to the interface `l3lbdrain` for
# --drain-seconds first, and the route-map entry that matches that interface adds the GRACEFUL_SHUTDOWN
# community, 65535:0 (RFC 8326), with `additive`, so a pool's own communities stay. An FRR router that
# receives it over eBGP sets the path's LOCAL_PREF to 0 by itself (bgpd/bgp_route.c, bgp_update()), so it
# leaves the router's multipath wherever another path exists, and stays installed where it is the only one;
# other routers need an inbound policy. The weight class's link bandwidth is not kept: a draining path at
# LOCAL_PREF 0 is out of the multipath wherever a path that does not drain exists, so its weight counts for
# nothing, and where every path drains at once they share equally for the drain.
#
# Named pools with BGP attributes (`pools`: [ { name; prefixes; bgp = { communities; largeCommunities;
# asPathPrepend; }; } ], in the pools' order): each such pool gets a prefix-list per family and a
# route-map entry before the others that sets its attributes. With weight classes that entry goes on
# (`on-match goto`) to the interface entries (weight classes, drain), which then sit at 1010 and up. A pool
# without attributes has no entry of its own, so its routes go out as without pools.
#
# Uplinks (`uplinks`; null, the default, renders exactly the above): the node's own BGP sessions, BGP
# unnumbered on each of `interfaces`, under the same `router bgp ASN`. Every key but `interfaces` may be
# left out; the defaults:
#   uplinks = {
#     interfaces = [ "eth1" "eth2" ];   # `neighbor IF interface peer-group L3LB-UPLINKS` each
#     remoteAs = "external";            # "external", "internal" or an AS number
#     routerId = null;                  # "10.255.0.1" renders `bgp router-id`; set it here or in your own
#                                       # config, else bgpd takes zebra's, which can be a Service IP on lo
#     accept = "all";                   # what the node takes in: "all", "default" (0.0.0.0/0, ::/0), "none"
#     timers = { keepalive = 3; hold = 9; };
#     bfd = { enable = true; detectMultiplier = 3; receiveInterval = 100; transmitInterval = 100; };
#     gracefulRestart = { enable = bfd.enable; restartTime = 30; };
#   };
# - Policy both ways, so that `bgp ebgp-requires-policy` (on in FRR's `traditional` profile, which NixOS
#   gets: its frr.conf has no `frr defaults`) lets routes through. Out: route-map L3LB-UPLINKS-OUT-V4/-V6,
#   entry 10 permits l3lb's host routes (prefix-list L3LB-V4/-V6) and nothing else, so the node is never a
#   transit. In: L3LB-UPLINKS-IN-V4/-V6, entry 10 denies host routes inside l3lb's prefixes (another node's
#   Service IPs: taken in, they could go out to another uplink), entry 20 permits per `accept` ("none": no
#   entry 20, FRR's implicit deny takes the rest). To announce or take in more, add your own entries to
#   these route-maps from 100 up: `route-map L3LB-UPLINKS-OUT-V4 permit 100` ` match ip address
#   prefix-list MINE`.
# - Address families: IPv6 unicast is never active by default (FRR 8.4 to 10.x): activated when there are
#   IPv6 prefixes. IPv4 unicast is active by default (`bgp default ipv4-unicast`), so it always gets its
#   policy, with or without IPv4 prefixes (without, its OUT route-map is only named: FRR denies everything
#   through a route-map that does not exist); its `activate` is rendered too, for configs with `no bgp
#   default ipv4-unicast` (FRR leaves the line out of its running config otherwise). IPv4 routes get IPv6
#   link-local next hops (extended next hop, automatic on interface peers).
# - Two or more interfaces: `bgp bestpath as-path multipath-relax`, so that the node's own traffic uses
#   every uplink when the routers have different AS numbers (`maximum-paths` is FRR's maximum by default).
# - Timers 3/9 s. Without BFD the hold time is the failure detection, and the traditional 180 s would keep
#   a dead node's share of the traffic going to it for three minutes (a session takes the lower of the two
#   sides' hold times: the routers need no change). With BFD too: FRR 10.4.0-10.5.4 waits 30 s before it
#   tears BGP down on BFD down unless the peer has explicit timers (FRR issues #19987, #22097; 10.6.0 fixed).
# - BFD (needs bfdd: services.frr.bfdd.enable): profile L3LB-UPLINKS on the peer-group. 100 ms x 3: a node
#   that dies, hangs or loses its link behind a switch leaves the routers' multipath 0.3 s later (measured,
#   BGP's teardown included); FRR's own 300 ms x 3 would put that near 1 s. 300 ms without a packet still
#   leaves room for a userspace bfdd on a loaded node; raise the intervals if `show bfd peers` shows flaps.
#   The routers need BFD on these sessions too, and the slower side's intervals win.
# - Graceful restart, on by default only with BFD: `bgp graceful-restart` and `preserve-fw-state` make the
#   routers keep this node's routes, and forward on them, while its bgpd restarts (a crash, an upgrade):
#   the kernel keeps the addresses on lo, so the traffic still lands here. A dead node must not keep them:
#   on BFD down a router sends a Hard Reset, and its interface going down is no graceful restart either;
#   both flush at once. Without BFD a dead node is found by the hold timer, whose expiry does enter
#   graceful restart: the routers keep its routes for hold + restart-time (measured). Hence the default.
#   `restartTime` bounds how long the routers keep the routes when bgpd does not come back, and so how long
#   a withdrawal made meanwhile goes unseen; a restarted bgpd is back within seconds (about 4 s in the lab).
#   Killing all of FRR (bfdd too) closes bgpd's TCP session before BFD notices: the routers keep the routes
#   for restart-time (measured), which is right while the node lives; stop l3lb before FRR when a node
#   goes away for good, so that its withdrawals go out first. FRR 8.4 (the lab) re-keys a restarted bgpd's
#   BFD session when the new BGP session comes up, which the routers see as BFD down: the kept routes go
#   then and come back with the next session, about 2 s later (without graceful restart they are gone for
#   the whole restart, about 8 s in the lab).
#
# `workQueue` (null, the default, renders nothing): zebra's RIB work-queue hold in ms, `zebra work-queue N`
# (a hidden command of zebra, the same in 8.4 and 10.x). zebra holds every route change for 10 ms by
# default (ZEBRA_RIB_PROCESS_HOLD_TIME, zebra_router.h) before it redistributes it; 0 takes those 10 ms
# off each announcement and withdrawal on the node (bench/peers.py measured it), for some CPU when many
# routes change at once (a node that learns large tables from its uplinks may want the default back).
#
# Pure: only builtins, so it evaluates without nixpkgs (tests feed its output to a real FRR).
{ prefixes, asn, name ? "L3LB", classes ? 0, interface ? "lo", classPrefix ? "l3lbw", drain ? false, drainInterface ? "l3lbdrain", pools ? [ ], uplinks ? null, workQueue ? null }:
let
  isV6 = p: builtins.match ".*:.*" p != null;
  len = p: builtins.fromJSON (builtins.elemAt (builtins.match ".*/([0-9]+)" p) 0);
  family = v6: {
    list = if v6 then "ipv6 prefix-list" else "ip prefix-list";
    match = if v6 then "ipv6 address" else "ip address";
    af = if v6 then "ipv6 unicast" else "ipv4 unicast";
    host = if v6 then 128 else 32;
    rm = "${name}-${if v6 then "V6" else "V4"}";
    members = builtins.filter (p: isV6 p == v6) prefixes;
  };
  families = builtins.filter (f: f.members != [ ]) [ (family false) (family true) ];
  entry = f: list: i: p:
    "${f.list} ${list} seq ${toString ((i + 1) * 10)} permit ${p}"
    + (if len p < f.host then " ge ${toString f.host}" else "");
  imap = fn: l: builtins.genList (i: fn i (builtins.elemAt l i)) (builtins.length l);
  attrs = p: p.bgp or { };
  sets = p:
    (let c = (attrs p).communities or [ ]; in if c != [ ] then [ " set community ${builtins.concatStringsSep " " c}" ] else [ ])
    ++ (let c = (attrs p).largeCommunities or [ ]; in if c != [ ] then [ " set large-community ${builtins.concatStringsSep " " c}" ] else [ ])
    ++ (let a = (attrs p).asPathPrepend or [ ]; in if a != [ ] then [ " set as-path prepend ${builtins.concatStringsSep " " (map toString a)}" ] else [ ]);
  # With weight classes or the drain, entries match the interface the address is on.
  byInterface = classes > 0 || drain;
  tagged = f: builtins.filter (p: sets p != [ ] && builtins.any (x: isV6 x == (f.host == 128)) p.prefixes) pools;
  # Entries 10, 20, ... for the pools with attributes; then the plain entries, moved to 1000 and up if any.
  base = f: if tagged f == [ ] then 0 else 1000;
  poolList = f: p: "${f.rm}-${p.name}";
  poolLists = f: builtins.concatMap
    (p: imap (entry f (poolList f p)) (builtins.filter (x: isV6 x == (f.host == 128)) p.prefixes))
    (tagged f);
  poolEntries = f: builtins.concatLists (imap
    (j: p: [ "route-map ${f.rm} permit ${toString ((j + 1) * 10)}" " match ${f.match} prefix-list ${poolList f p}" ]
      ++ sets p
      ++ (if byInterface then [ " on-match goto ${toString (base f + 10)}" ] else [ ])
      ++ [ "exit" ])
    (tagged f));
  # Entry 10 without weight (on `interface` only when weighted or draining); 20 the drain; 20+w weight class w.
  unweighted = f: [ "route-map ${f.rm} permit ${toString (base f + 10)}" " match ${f.match} prefix-list ${f.rm}" ]
    ++ (if byInterface then [ " match interface ${interface}" ] else [ ]) ++ [ "exit" ];
  draining = f: if !drain then [ ] else [
    "route-map ${f.rm} permit ${toString (base f + 20)}"
    " match ${f.match} prefix-list ${f.rm}"
    " match interface ${drainInterface}"
    " set community graceful-shutdown additive"
    "exit"
  ];
  weighted = f: builtins.concatLists (builtins.genList
    (i:
      let w = toString (i + 1); in [
        "route-map ${f.rm} permit ${toString (base f + 21 + i)}"
        " match ${f.match} prefix-list ${f.rm}"
        " match interface ${classPrefix}${w}"
        " set extcommunity bandwidth ${w}"
        "exit"
      ])
    classes);
  policy = f: imap (entry f f.rm) f.members ++ poolLists f ++ poolEntries f ++ unweighted f ++ draining f ++ weighted f ++ [ "!" ];
  redistribute = f: [ " address-family ${f.af}" ]
    ++ (if f.members != [ ] then [ "  redistribute connected route-map ${f.rm}" ] else [ ])
    ++ (if up == null then [ ] else up.family f)
    ++ [ " exit-address-family" ];

  # ---- uplinks (see the header)
  up = if uplinks == null then null else
    let
      u = uplinks;
      group = "${name}-UPLINKS";
      bfd = { enable = true; detectMultiplier = 3; receiveInterval = 100; transmitInterval = 100; } // (u.bfd or { });
      gr = { enable = bfd.enable; restartTime = 30; } // (u.gracefulRestart or { });
      timers = { keepalive = 3; hold = 9; } // (u.timers or { });
      remoteAs = u.remoteAs or "external";
      accept = u.accept or "all";
      routerId = u.routerId or null;
      interfaces = u.interfaces or [ ];
      check = cond: msg: if cond then true else throw "l3lb frr.nix, uplinks: ${msg}";
      valid = check (builtins.isList interfaces && interfaces != [ ]) "interfaces must be a non-empty list of interface names"
        && check (builtins.isInt remoteAs || builtins.elem remoteAs [ "external" "internal" ])
        "remoteAs must be \"external\", \"internal\" or an AS number, not ${builtins.toJSON remoteAs}"
        && check (builtins.elem accept [ "all" "default" "none" ])
        "accept must be \"all\", \"default\" or \"none\", not ${builtins.toJSON accept}";
      defaultList = f: "${group}-DEFAULT-${if f.host == 128 then "V6" else "V4"}";
      out = f: "${group}-OUT-${if f.host == 128 then "V6" else "V4"}";
      inn = f: "${group}-IN-${if f.host == 128 then "V6" else "V4"}";
      # A family without prefixes (IPv4, active all the same) has no entry 10 either way.
      own = f: f.members != [ ];
      policy = f:
        (if accept == "default" then [ "${f.list} ${defaultList f} seq 10 permit ${if f.host == 128 then "::/0" else "0.0.0.0/0"}" ] else [ ])
        ++ (if own f then [ "route-map ${out f} permit 10" " match ${f.match} prefix-list ${f.rm}" "exit" ] else [ ])
        ++ (if own f then [ "route-map ${inn f} deny 10" " match ${f.match} prefix-list ${f.rm}" "exit" ] else [ ])
        ++ (if accept == "none" then [ ]
        else [ "route-map ${inn f} permit 20" ]
          ++ (if accept == "default" then [ " match ${f.match} prefix-list ${defaultList f}" ] else [ ])
          ++ [ "exit" ])
        ++ [ "!" ];
    in
    assert valid; {
      policy = [ "! l3lb: uplinks, BGP unnumbered on ${builtins.concatStringsSep " " interfaces}" ]
        ++ builtins.concatLists (map policy afs)
        ++ (if bfd.enable then [
        "bfd"
        " profile ${group}"
        "  detect-multiplier ${toString bfd.detectMultiplier}"
        "  receive-interval ${toString bfd.receiveInterval}"
        "  transmit-interval ${toString bfd.transmitInterval}"
        " exit"
        "exit"
        "!"
      ] else [ ]);
      global =
        (if routerId != null then [ " bgp router-id ${routerId}" ] else [ ])
        ++ (if builtins.length interfaces > 1 then [ " bgp bestpath as-path multipath-relax" ] else [ ])
        ++ (if gr.enable then [
          " bgp graceful-restart"
          " bgp graceful-restart preserve-fw-state"
          " bgp graceful-restart restart-time ${toString gr.restartTime}"
        ] else [ ])
        ++ [
          " neighbor ${group} peer-group"
          " neighbor ${group} remote-as ${toString remoteAs}"
          " neighbor ${group} timers ${toString timers.keepalive} ${toString timers.hold}"
        ]
        ++ (if bfd.enable then [ " neighbor ${group} bfd profile ${group}" ] else [ ])
        ++ map (i: " neighbor ${i} interface peer-group ${group}") interfaces;
      family = f: [
        "  neighbor ${group} activate"
        "  neighbor ${group} route-map ${inn f} in"
        "  neighbor ${group} route-map ${out f} out"
      ];
    };

  # The address families under `router bgp`: those with prefixes; with uplinks IPv4 always (active by default).
  afs = if up != null && builtins.all (f: f.host == 128) families then [ (family false) ] ++ families else families;

  lines = [ "! l3lb: advertise Service IPs held on this node" ]
    ++ (if workQueue == null then [ ] else [ "zebra work-queue ${toString workQueue}" "!" ])
    ++ builtins.concatLists (map policy families)
    ++ (if up == null then [ ] else up.policy)
    ++ [ "router bgp ${toString asn}" ]
    ++ (if up == null then [ ] else up.global)
    ++ builtins.concatLists (map redistribute afs)
    ++ [ "exit" ];
in
builtins.concatStringsSep "\n" lines + "\n"
