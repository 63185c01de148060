# Named address pools, from services.l3lb.pools (an attribute set: name -> pool), in the order the agent
# takes them for auto-assignment: by `priority`, then name. `json` is the agent's config file
# (`l3lb run --config`); `ordered` also carries each pool's BGP attributes, for frr.nix.
#
# Pure: only builtins, so it evaluates without nixpkgs (tests feed `json` to the real `l3lb run`).
{ pools }:
let
  prio = n: pools.${n}.priority or 100;
  names = builtins.sort (a: b: if prio a != prio b then prio a < prio b else a < b) (builtins.attrNames pools);
  ordered = map (n: pools.${n} // { name = n; }) names;
  # Only what is set, so the file reads like one written by hand.
  optional = key: value: empty: if value == empty then { } else { ${key} = value; };
  agent = p:
    { inherit (p) name prefixes; }
    // optional "reserved" (p.reserved or [ ]) [ ]
    // optional "autoAssign" (p.autoAssign or true) true
    // optional "namespaces" (p.namespaces or [ ]) [ ]
    // optional "serviceSelector" (p.serviceSelector or null) null
    // optional "nodeSelector" (p.nodeSelector or null) null;
in
{
  inherit ordered;
  json = builtins.toJSON { pools = map agent ordered; };
}
