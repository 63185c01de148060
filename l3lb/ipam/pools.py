"""Named address pools: which prefixes, who may get an IP from them, and which nodes announce them.

A pool comes from the config file (``l3lb run --config FILE``, YAML or JSON) or, as the one-pool
shorthand, from ``--prefix``/``--reserve`` (a pool named ``default`` that every Service may use). The
file is validated whole, and every error names the field it is about (``pools[1].prefixes[0]: ...``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_POOL = "default"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
POOL_FIELDS = (
    "name",
    "prefixes",
    "reserved",
    "autoAssign",
    "namespaces",
    "serviceSelector",
    "nodeSelector",
)

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in self.values
        return inside if self.operator == "In" else not inside


@dataclass(frozen=True, slots=True)
class Selector:
    """A Kubernetes label selector (``matchLabels`` and ``matchExpressions``); empty selects everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            values = ",".join(sorted(r.values))
            parts.append(
                {
                    "In": f"{r.key} in ({values})",
                    "NotIn": f"{r.key} notin ({values})",
                    "Exists": r.key,
                    "DoesNotExist": f"!{r.key}",
                }[r.operator]
            )
        return ",".join(parts) or "everything"


@dataclass(frozen=True, slots=True)
class AddressPool:
    name: str
    prefixes: tuple[Network, ...]
    reserved: tuple[Network, ...] = ()
    auto_assign: bool = True
    """Off: only Services that name the pool (annotation) or request an IP in it get its addresses."""
    namespaces: frozenset[str] = frozenset()
    """The namespaces whose Services may use the pool; empty: every namespace."""
    service_selector: Selector = Selector()
    node_selector: Selector = Selector()
    """Only nodes whose labels match announce the pool's IPs."""

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip.version == net.version and ip in net for net in self.prefixes)

    def families(self) -> set[str]:
        return {"IPv6" if net.version == 6 else "IPv4" for net in self.prefixes}

    def refuses(self, namespace: str, labels: Labels) -> str | None:
        """Why a Service in ``namespace`` with ``labels`` may not use this pool, or None if it may."""
        if self.namespaces and namespace not in self.namespaces:
            return f"pool {self.name} allows namespaces {', '.join(sorted(self.namespaces))}, not {namespace}"
        if not self.service_selector.matches(labels):
            return f"pool {self.name} selects Services {self.service_selector}"
        return None


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the field."""


def shorthand(prefixes: Iterable[Network], reserved: Iterable[Network] = ()) -> tuple[AddressPool, ...]:
    """``--prefix``/``--reserve``: one pool that every Service may use. ConfigError for a reserved range
    inside none of the prefixes (a typo would otherwise reserve nothing, silently)."""
    prefixes, reserved = tuple(prefixes), tuple(reserved)
    for r in reserved:
        if not any(r.version == p.version and r.subnet_of(p) for p in prefixes):  # type: ignore[arg-type]
            inside = ", ".join(map(str, prefixes))
            raise ConfigError(f"--reserve {r} is inside none of the prefixes ({inside})")
    return (AddressPool(DEFAULT_POOL, prefixes, reserved),)


def load(path: str | Path) -> tuple[AddressPool, ...]:
    """Reads and validates a config file (YAML, of which JSON is a subset)."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: {err.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not YAML or JSON: {err}") from None
    try:
        return parse(doc)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse(doc: Any) -> tuple[AddressPool, ...]:
    if not isinstance(doc, dict):
        raise ConfigError("the top level must be a mapping with a 'pools' list")
    unknown = set(doc) - {"pools"}
    if unknown:
        raise ConfigError(f"unknown field {sorted(unknown)[0]!r} (known: pools)")
    raw = doc.get("pools")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("pools: a non-empty list of pools is required")
    pools = tuple(_pool(f"pools[{i}]", p) for i, p in enumerate(raw))
    names: dict[str, int] = {}
    seen: list[tuple[str, Network]] = []
    for i, pool in enumerate(pools):
        if pool.name in names:
            raise ConfigError(f"pools[{i}].name: {pool.name!r} is also the name of pools[{names[pool.name]}]")
        names[pool.name] = i
        for j, net in enumerate(pool.prefixes):
            for other_name, other in seen:
                if net.version == other.version and net.overlaps(other):
                    raise ConfigError(
                        f"pools[{i}].prefixes[{j}]: {net} overlaps {other} of pool {other_name}"
                    )
            seen.append((pool.name, net))
    return pools


def _pool(where: str, raw: Any) -> AddressPool:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping is required")
    unknown = sorted(set(raw) - set(POOL_FIELDS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(POOL_FIELDS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", name):
        raise ConfigError(f"{where}.name: a name of up to 63 letters, digits, '-', '_' or '.' is required")
    prefixes = _nets(f"{where}.prefixes", raw.get("prefixes"), required=True)
    reserved = _nets(f"{where}.reserved", raw.get("reserved", []), required=False)
    for j, r in enumerate(reserved):
        if not any(r.version == p.version and r.subnet_of(p) for p in prefixes):  # type: ignore[arg-type]
            raise ConfigError(f"{where}.reserved[{j}]: {r} is inside none of the pool's prefixes")
    auto = raw.get("autoAssign", True)
    if not isinstance(auto, bool):
        raise ConfigError(f"{where}.autoAssign: true or false")
    namespaces = raw.get("namespaces", [])
    if not isinstance(namespaces, list) or not all(isinstance(n, str) and n for n in namespaces):
        raise ConfigError(f"{where}.namespaces: a list of namespace names")
    return AddressPool(
        name=name,
        prefixes=prefixes,
        reserved=reserved,
        auto_assign=auto,
        namespaces=frozenset(namespaces),
        service_selector=_selector(f"{where}.serviceSelector", raw.get("serviceSelector")),
        node_selector=_selector(f"{where}.nodeSelector", raw.get("nodeSelector")),
    )


def _nets(where: str, raw: Any, *, required: bool) -> tuple[Network, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or (required and not raw):
        raise ConfigError(f"{where}: a list of CIDRs" + (", not empty" if required else ""))
    nets: list[Network] = []
    for j, text in enumerate(raw):
        try:
            net = ipaddress.ip_network(str(text).strip(), strict=True)
        except ValueError as err:
            raise ConfigError(f"{where}[{j}]: {err}") from None
        for k, other in enumerate(nets):
            if net.version == other.version and net.overlaps(other):
                raise ConfigError(f"{where}[{j}]: {net} overlaps {where}[{k}] {other}")
        nets.append(net)
    return tuple(nets)


def _selector(where: str, raw: Any) -> Selector:
    if raw is None:
        return Selector()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a label selector (matchLabels, matchExpressions)")
    unknown = sorted(set(raw) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field (known: matchLabels, matchExpressions)")
    reqs = []
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise ConfigError(f"{where}.matchLabels: a mapping of label to value")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"{where}.matchLabels.{key}: label values are strings (quote true, 1, ...)")
        reqs.append(Requirement(key, "In", frozenset([value])))
    exprs = raw.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise ConfigError(f"{where}.matchExpressions: a list")
    for i, e in enumerate(exprs):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("key"), str):
            raise ConfigError(f"{at}: key, operator and values are required")
        op, values = e.get("operator"), e.get("values") or []
        if op not in OPERATORS:
            raise ConfigError(f"{at}.operator: {op!r} is not one of {', '.join(OPERATORS)}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{at}.values: a list of strings")
        needs_values = op in ("In", "NotIn")
        if needs_values != bool(values):
            raise ConfigError(f"{at}.values: {'required' if needs_values else 'must be empty'} for {op}")
        reqs.append(Requirement(e["key"], op, frozenset(values)))
    return Selector(tuple(reqs))


def fingerprint(pools: Iterable[AddressPool]) -> str:
    """A short hash of the pools as the allocator uses them: agents whose hashes differ disagree on which
    Service gets which IP or which node announces it."""

    def selector(s: Selector) -> list:
        return sorted([r.key, r.operator, sorted(r.values)] for r in s.requirements)

    canon = [
        [
            p.name,
            [str(n) for n in p.prefixes],
            [str(n) for n in p.reserved],
            p.auto_assign,
            sorted(p.namespaces),
            selector(p.service_selector),
            selector(p.node_selector),
        ]
        for p in pools
    ]
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()[:16]
