"""The other load balancers' Service annotations, read as aliases of l3lb's own: requested IPs, sharing
keys and pool names, each with its project's value syntax, so that a cluster moves to l3lb without
rewriting a Service.

Precedence, per kind: l3lb's own annotation, then MetalLB's (``metallb.io/``, then the deprecated
``metallb.universe.tf/``, as MetalLB reads them), Cilium's (``lbipam.cilium.io/``, then ``io.cilium/``),
kube-vip's, PureLB's; ``spec.loadBalancerIP`` last. The first one set (not empty) is read. Two that are
set and disagree give a Warning (``AnnotationConflict``) naming both and the one read; a value l3lb
cannot honour (a hostname, a sharing rule l3lb does not have, one IP per address range) gives a Warning
(``UnsupportedAnnotation``) saying what l3lb does instead. Nothing here raises: any text is a value.

What each project's code does with its value (the README lists where this was confirmed):

- MetalLB ``loadBalancerIPs``: comma-separated IPs, spaces around them allowed; one that is not an IP
  makes the whole request invalid. ``allow-shared-ip``: the sharing key. ``address-pool``: a pool name.
- Cilium ``ips``: comma-separated, spaces allowed, entries that are not IPs skipped; it adds
  ``spec.loadBalancerIP`` to them. ``sharing-key``: shared only within the namespace unless both
  Services list each other's namespace (or ``*``) in ``sharing-cross-namespace``.
- kube-vip ``loadbalancerIPs``: comma-separated, spaces allowed; an entry that is not an IP is a DNS name.
- PureLB ``addresses``: comma-separated (no spaces in PureLB; l3lb accepts them); one that is not an IP
  makes the request invalid. ``service-group``: a pool name, ignored when ``addresses`` is set.
  ``allow-shared-ip``: the sharing key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

IPS_ANNOTATION = "l3lb.io/load-balancer-ips"
SHARING_ANNOTATION = "l3lb.io/allow-shared-ip"
POOL_ANNOTATION = "l3lb.io/address-pool"
ANNOTATION_CONFLICT = "AnnotationConflict"
UNSUPPORTED = "UnsupportedAnnotation"

METALLB_IPS, METALLB_IPS_OLD = "metallb.io/loadBalancerIPs", "metallb.universe.tf/loadBalancerIPs"
METALLB_SHARE, METALLB_SHARE_OLD = "metallb.io/allow-shared-ip", "metallb.universe.tf/allow-shared-ip"
METALLB_POOL, METALLB_POOL_OLD = "metallb.io/address-pool", "metallb.universe.tf/address-pool"
CILIUM_IPS, CILIUM_IPS_OLD = "lbipam.cilium.io/ips", "io.cilium/lb-ipam-ips"
CILIUM_SHARE, CILIUM_SHARE_OLD = "lbipam.cilium.io/sharing-key", "io.cilium/lb-ipam-sharing-key"
CILIUM_CROSS, CILIUM_CROSS_OLD = (
    "lbipam.cilium.io/sharing-cross-namespace",
    "io.cilium/lb-ipam-sharing-cross-namespace",
)
CILIUM_DIFFERENT_PODS = "lbipam.cilium.io/sharing-permit-different-pods"
KUBE_VIP_IPS = "kube-vip.io/loadbalancerIPs"
KUBE_VIP_IGNORE = "kube-vip.io/ignore"
PURELB_IPS = "purelb.io/addresses"
PURELB_SHARE = "purelb.io/allow-shared-ip"
PURELB_POOL = "purelb.io/service-group"
PURELB_MULTI_POOL = "purelb.io/multi-pool"

SPEC_IP = "spec.loadBalancerIP"
ALL_NAMESPACES = "*"


@dataclass(frozen=True, slots=True)
class Reading:
    """What l3lb reads from a Service's annotations and ``spec.loadBalancerIP``."""

    requested: tuple[str, ...] = ()
    request_error: str | None = None
    request_source: str | None = None
    """The annotation (or ``spec.loadBalancerIP``) the requested IPs come from."""
    sharing_key: str | None = None
    sharing_namespaces: tuple[str, ...] | None = None
    """Namespaces the Service may share its IP with besides its own: None for any (l3lb's rule), ``()``
    for none (Cilium's default), ``("*",)`` for all, or Cilium's list."""
    pool: str | None = None
    notes: tuple[tuple[str, str], ...] = ()
    """(reason, message): Warnings about what was read."""


def ip_text(text: str) -> str:
    """The canonical text of an IP address, or ValueError; no IPv6 zone (``%eth0``): not a Service IP."""
    text = text.strip()
    if "%" in text:
        raise ValueError(f"{text!r} has a zone")
    return str(ipaddress.ip_address(text))


@dataclass
class _Parsed:
    key: str
    raw: str
    ips: tuple[str, ...] = ()
    error: str | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)


def _strict(key: str, raw: str) -> _Parsed:
    """l3lb's own syntax, MetalLB's and PureLB's: comma-separated IPs; one that is not an IP makes the
    request invalid. Empty entries are skipped and spaces around entries allowed (PureLB has none)."""
    out = _Parsed(key, raw)
    ips: list[str] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            ip = ip_text(part)
        except ValueError:
            out.error = f"annotation {key}: {part.strip()!r} is not an IP address"
            return out
        if ip not in ips:
            ips.append(ip)
    out.ips = tuple(ips)
    return out


def _lenient(why: str) -> Callable[[str, str], _Parsed]:
    """A parser that skips the entries that are not IPs, each with an UnsupportedAnnotation note saying
    ``why`` (what the other project does with them)."""

    def parse(key: str, raw: str) -> _Parsed:
        out = _Parsed(key, raw)
        ips: list[str] = []
        for part in raw.split(","):
            try:
                ip = ip_text(part)
            except ValueError:
                if part.strip():
                    out.notes.append((UNSUPPORTED, f"{key}: {part.strip()!r} is not an IP address; {why}"))
                continue
            if ip not in ips:
                ips.append(ip)
        out.ips = tuple(ips)
        return out

    return parse


# Cilium skips entries that are not IPs (and logs them); kube-vip resolves them as DNS names, l3lb cannot.
_cilium = _lenient("skipped, as Cilium does")
_kube_vip = _lenient(
    "kube-vip resolves it as a DNS name, l3lb does not and ignores it (request the IP itself)"
)


IP_SOURCES: tuple[tuple[str, Callable[[str, str], _Parsed]], ...] = (
    (IPS_ANNOTATION, _strict),
    (METALLB_IPS, _strict),
    (METALLB_IPS_OLD, _strict),
    (CILIUM_IPS, _cilium),
    (CILIUM_IPS_OLD, _cilium),
    (KUBE_VIP_IPS, _kube_vip),
    (PURELB_IPS, _strict),
)
SHARING_SOURCES = (
    SHARING_ANNOTATION,
    METALLB_SHARE,
    METALLB_SHARE_OLD,
    CILIUM_SHARE,
    CILIUM_SHARE_OLD,
    PURELB_SHARE,
)
POOL_SOURCES = (POOL_ANNOTATION, METALLB_POOL, METALLB_POOL_OLD, PURELB_POOL)
KNOWN = (
    *(k for k, _ in IP_SOURCES),
    *SHARING_SOURCES,
    *POOL_SOURCES,
    CILIUM_CROSS,
    CILIUM_CROSS_OLD,
    CILIUM_DIFFERENT_PODS,
    KUBE_VIP_IGNORE,
    PURELB_MULTI_POOL,
)
"""Every annotation this module reads."""


def _show(key: str, value: str) -> str:
    return f"{key}={value!r}"


def _conflict(read: tuple[str, str], other: tuple[str, str]) -> tuple[str, str]:
    own = read[0] in (IPS_ANNOTATION, SHARING_ANNOTATION, POOL_ANNOTATION)
    return (
        ANNOTATION_CONFLICT,
        f"{_show(*read)} and {_show(*other)} disagree: l3lb reads {read[0]}"
        + (" (l3lb's own annotation wins)" if own else ""),
    )


def _differ(a: _Parsed, b: _Parsed) -> bool:
    """Whether two requests ask for different things (two invalid ones differ when their texts do)."""

    def what(p: _Parsed) -> tuple:
        return (frozenset(p.ips), p.raw.strip() if p.error else None)

    return what(a) != what(b)


def _set(annotations: Mapping[str, str], key: str) -> str | None:
    """The annotation's value if it is set to something, else None (an empty value counts as unset)."""
    value = annotations.get(key)
    return value if isinstance(value, str) and value.strip() else None


OWN = frozenset((IPS_ANNOTATION, SHARING_ANNOTATION, POOL_ANNOTATION))
OTHERS = frozenset(KNOWN) - OWN
_EMPTY = Reading()


def read(annotations: Mapping[str, str], spec: Mapping[str, Any]) -> Reading:
    """Requested IPs, sharing key and pool name of a Service, from l3lb's annotations and their aliases."""
    if OTHERS.isdisjoint(annotations):  # l3lb's own at most: the common case, kept cheap
        return _own(annotations, spec)
    notes: list[tuple[str, str]] = []

    # ---- requested IPs
    parsed = [parse(key, value) for key, parse in IP_SOURCES if (value := _set(annotations, key)) is not None]
    spec_ip = spec.get("loadBalancerIP") if isinstance(spec.get("loadBalancerIP"), str) else None
    requested: tuple[str, ...] = ()
    error: str | None = None
    source: str | None = None
    if parsed:
        winner = parsed[0]
        notes += winner.notes
        requested, error, source = winner.ips, winner.error, winner.key
        notes += [
            _conflict((winner.key, winner.raw), (o.key, o.raw)) for o in parsed[1:] if _differ(winner, o)
        ]
        if spec_ip and spec_ip.strip() and winner.key != IPS_ANNOTATION:
            try:
                spec_canonical = ip_text(spec_ip)
            except ValueError:
                spec_canonical = None
            if winner.key in (CILIUM_IPS, CILIUM_IPS_OLD):
                # Cilium requests spec.loadBalancerIP and the annotation's IPs together.
                if spec_canonical and spec_canonical not in requested:
                    requested = (spec_canonical, *requested)
            elif spec_canonical not in requested:
                notes.append(_conflict((winner.key, winner.raw), (SPEC_IP, spec_ip)))
    elif IPS_ANNOTATION in annotations:
        source = IPS_ANNOTATION  # set but empty: asks for nothing in particular, and shadows the spec
    elif spec_ip and spec_ip.strip():
        try:
            requested, source = (ip_text(spec_ip),), SPEC_IP
        except ValueError:
            error, source = f"{SPEC_IP}: {spec_ip.strip()!r} is not an IP address", SPEC_IP
    if error:
        requested = ()

    # ---- sharing key
    keys = [(k, v) for k in SHARING_SOURCES if (v := _set(annotations, k)) is not None]
    sharing_key: str | None = None
    sharing_namespaces: tuple[str, ...] | None = None
    if keys:
        sharing_key = keys[0][1]
        notes += [_conflict(keys[0], other) for other in keys[1:] if other[1] != keys[0][1]]
        if keys[0][0] in (CILIUM_SHARE, CILIUM_SHARE_OLD):
            sharing_namespaces = _cilium_namespaces(annotations)
            if _set(annotations, CILIUM_DIFFERENT_PODS) and spec.get("externalTrafficPolicy") == "Local":
                notes.append(
                    (
                        UNSUPPORTED,
                        f"{CILIUM_DIFFERENT_PODS}: l3lb does not let Local Services with different "
                        "selectors share an IP (their nodes differ); they get IPs of their own",
                    )
                )

    # ---- pool
    pools = [(k, v) for k in POOL_SOURCES if (v := _set(annotations, k)) is not None]
    pool: str | None = None
    if pools:
        if pools[0][0] == PURELB_POOL and source == PURELB_IPS:
            pass  # PureLB ignores service-group when addresses is set (and says so in an Event)
        else:
            pool = pools[0][1].strip()
            notes += [_conflict(pools[0], other) for other in pools[1:] if other[1].strip() != pool]

    # ---- what l3lb does not do
    if annotations.get(KUBE_VIP_IGNORE) == "true":
        notes.append(
            (
                UNSUPPORTED,
                f"{KUBE_VIP_IGNORE}=true: l3lb does not read it and serves the Service (its class is "
                "l3lb's); to keep l3lb away, give the Service a loadBalancerClass l3lb does not own",
            )
        )
    if (annotations.get(PURELB_MULTI_POOL) or "").strip().lower() == "true":
        notes.append(
            (UNSUPPORTED, f"{PURELB_MULTI_POOL}=true: l3lb gives a Service one IP per address family")
        )
    return Reading(
        requested=requested,
        request_error=error,
        request_source=source,
        sharing_key=sharing_key,
        sharing_namespaces=sharing_namespaces,
        pool=pool,
        notes=tuple(dict.fromkeys(notes)),
    )


def _own(annotations: Mapping[str, str], spec: Mapping[str, Any]) -> Reading:
    raw = annotations.get(IPS_ANNOTATION)
    share, pool = _set(annotations, SHARING_ANNOTATION), _set(annotations, POOL_ANNOTATION)
    spec_ip = spec.get("loadBalancerIP")
    if raw is None and not share and not pool and not spec_ip:
        return _EMPTY
    requested: tuple[str, ...] = ()
    error = source = None
    if raw is not None and raw.strip():
        parsed = _strict(IPS_ANNOTATION, raw)
        requested, error, source = parsed.ips, parsed.error, IPS_ANNOTATION
    elif raw is not None:
        source = IPS_ANNOTATION
    elif isinstance(spec_ip, str) and spec_ip.strip():
        source = SPEC_IP
        try:
            requested = (ip_text(spec_ip),)
        except ValueError:
            error = f"{SPEC_IP}: {spec_ip.strip()!r} is not an IP address"
    return Reading(
        requested=requested,
        request_error=error,
        request_source=source,
        sharing_key=share,
        pool=pool.strip() if pool else None,
    )


def _cilium_namespaces(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """Cilium's ``sharing-cross-namespace``: a comma-separated list of namespaces, or ``*`` (split on commas
    without trimming, as Cilium does)."""
    key = CILIUM_CROSS if CILIUM_CROSS in annotations else CILIUM_CROSS_OLD
    value = annotations.get(key) or ""
    if not value:
        return ()
    return tuple(n for n in value.split(",") if n)


def uses_aliases(annotations: Mapping[str, str]) -> bool:
    """Whether any annotation of another project that this module reads is set."""
    return any(k in annotations for k in KNOWN if not k.startswith("l3lb.io/"))
