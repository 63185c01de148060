# The daemon's command line, from the module's options. Pure: only builtins.
# `kubeconfig`: the path the daemon reads, or null when the caller adds it itself (the module adds
# `--kubeconfig %d/kubeconfig` after escaping the rest: systemd must expand that specifier, and no other).
{ prefixes ? [ ]
, config ? null # the pools' config file, instead of prefixes
, nodeName
, kubeconfig ? null
, interface ? "lo"
, loadBalancerClass ? "l3lb.io/l3lb"
, addressLifetime ? 60
, metrics ? null # null (off) or { address; port; }
, logLevel ? "info"
, logFormat ? "text"
, weightClasses ? 0 # 0: weighted anycast off
, drainSeconds ? 40
, announceHoldDown ? 0
, withdrawOnCordon ? false
, extraArgs ? [ ]
}:
[ "run" ]
++ builtins.concatMap (p: [ "--prefix" p ]) prefixes
++ (if config == null then [ ] else [ "--config" config ])
++ (if kubeconfig == null then [ ] else [ "--kubeconfig" kubeconfig ])
++ [
  "--node-name" nodeName
  "--interface" interface
  "--load-balancer-class" loadBalancerClass
  "--address-lifetime" (toString addressLifetime)
  "--metrics-address" (if metrics == null then "off" else "${metrics.address}:${toString metrics.port}")
  "--log-level" logLevel
  "--log-format" logFormat
  "--drain-seconds" (toString drainSeconds)
  "--announce-hold-down" (toString announceHoldDown)
]
++ (if withdrawOnCordon then [ "--withdraw-on-cordon" ] else [ ])
++ (if weightClasses > 0 then [ "--weighted" "--weight-classes" (toString weightClasses) ] else [ ])
++ extraArgs
