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
# Named pools with BGP attributes (`pools`: [ { name; prefixes; bgp = { communities; largeCommunities;
# asPathPrepend; }; } ], in the pools' order): each such pool gets a prefix-list per family and a
# route-map entry before the others that sets its attributes. With weight classes that entry goes on
# (`on-match goto`) to the interface entries, which then sit at 1010 and up. A pool without attributes
# has no entry of its own, so its routes go out as without pools.
#
# Pure: only builtins, so it evaluates without nixpkgs (tests feed its output to a real FRR).
{ prefixes, asn, name ? "L3LB", classes ? 0, interface ? "lo", classPrefix ? "l3lbw", pools ? [ ] }:
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
      ++ (if classes > 0 then [ " on-match goto ${toString (base f + 10)}" ] else [ ])
      ++ [ "exit" ])
    (tagged f));
  # Entry 10 without weight (on `interface` only when weighted); entry 20+w for weight class w.
  unweighted = f: [ "route-map ${f.rm} permit ${toString (base f + 10)}" " match ${f.match} prefix-list ${f.rm}" ]
    ++ (if classes > 0 then [ " match interface ${interface}" ] else [ ]) ++ [ "exit" ];
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
  policy = f: imap (entry f f.rm) f.members ++ poolLists f ++ poolEntries f ++ unweighted f ++ weighted f ++ [ "!" ];
  redistribute = f: [
    " address-family ${f.af}"
    "  redistribute connected route-map ${f.rm}"
    " exit-address-family"
  ];
  lines = [ "! l3lb: advertise Service IPs held on this node" ]
    ++ builtins.concatLists (map policy families)
    ++ [ "router bgp ${toString asn}" ]
    ++ builtins.concatLists (map redistribute families)
    ++ [ "exit" ];
in
builtins.concatStringsSep "\n" lines + "\n"
