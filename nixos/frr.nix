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
# Pure: only builtins, so it evaluates without nixpkgs (tests feed its output to a real FRR).
{ prefixes, asn, name ? "L3LB", classes ? 0, interface ? "lo", classPrefix ? "l3lbw" }:
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
  entry = f: i: p:
    "${f.list} ${f.rm} seq ${toString ((i + 1) * 10)} permit ${p}"
    + (if len p < f.host then " ge ${toString f.host}" else "");
  imap = fn: l: builtins.genList (i: fn i (builtins.elemAt l i)) (builtins.length l);
  # Entry 10 without weight (on `interface` only when weighted); entry 20+w for weight class w.
  unweighted = f: [ "route-map ${f.rm} permit 10" " match ${f.match} prefix-list ${f.rm}" ]
    ++ (if classes > 0 then [ " match interface ${interface}" ] else [ ]) ++ [ "exit" ];
  weighted = f: builtins.concatLists (builtins.genList
    (i:
      let w = toString (i + 1); in [
        "route-map ${f.rm} permit ${toString (21 + i)}"
        " match ${f.match} prefix-list ${f.rm}"
        " match interface ${classPrefix}${w}"
        " set extcommunity bandwidth ${w}"
        "exit"
      ])
    classes);
  policy = f: imap (entry f) f.members ++ unweighted f ++ weighted f ++ [ "!" ];
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
