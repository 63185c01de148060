"""Reading the host's FRR through vtysh (read-only): routes, what bgpd advertises, and whether the running
configuration has the prefix-list, route-map and redistribute lines l3lb relies on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

from ..config import Network


class Vtysh:
    def __init__(self, vty_socket: str | None = None, binary: str = "vtysh") -> None:
        self.argv = [binary] + (
            ["--vty_socket", vty_socket, "--config_dir", vty_socket] if vty_socket else []
        )

    @property
    def installed(self) -> bool:
        return shutil.which(self.argv[0]) is not None

    def run(self, command: str) -> str | None:
        """The command's output, or None when vtysh is missing or FRR does not answer."""
        if not self.installed:
            return None
        try:
            out = subprocess.run([*self.argv, "-c", command], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    def json(self, command: str) -> Any:
        out = self.run(command)
        try:
            return json.loads(out) if out else None
        except json.JSONDecodeError:
            return None

    def route(self, ip: str) -> tuple[bool, int]:
        """(whether zebra has ``ip`` as a connected host route, how many BGP peers bgpd advertises it to)."""
        v6 = ":" in ip
        host = f"{ip}/{128 if v6 else 32}"
        rib = self.json(f"show {'ipv6' if v6 else 'ip'} route {host} json") or {}
        connected = any(r.get("protocol") == "connected" for r in rib.get(host, []))
        bgp = self.json(f"show bgp {'ipv6' if v6 else 'ipv4'} unicast {host} json") or {}
        return connected, len(bgp.get("advertisedTo") or {})

    def established_peers(self) -> int | None:
        data = self.json("show bgp summary json")
        if data is None:
            return None
        return sum(
            p.get("state") == "Established"
            for af in data.values()
            if isinstance(af, dict)
            for p in (af.get("peers") or {}).values()
        )


def check_config(
    running: str, prefixes: tuple[Network, ...], classes: tuple[str, ...] = (), drain: str | None = None
) -> list[str]:
    """Checks that every prefix is matched (host routes only) by a prefix-list, used by a permit route-map,
    that is applied by ``redistribute connected`` in the right address family under ``router bgp``; with
    weighted anycast (``classes``: the weight-class interfaces, weight 1, 2, ...) that this route-map has,
    for each class, an entry that matches its interface and sets the link bandwidth to its weight; and with
    ``drain`` (the drain interface) an entry that matches it and adds the graceful-shutdown community.

    Returns what is missing, one phrase per item: empty when the configuration is complete."""
    lists: dict[str, list[tuple[str, int | None]]] = {}
    route_maps: dict[str, set[str]] = {}
    entries: dict[str, list[dict[str, str]]] = {}  # route-map -> its permit entries' interface and sets
    redistributed: dict[str, set[str]] = {"ipv4": set(), "ipv6": set()}
    current_map: str | None = None
    family: str | None = None
    for raw in running.splitlines():
        line = raw.strip()
        m = re.match(r"(ip|ipv6) prefix-list (\S+) (?:seq \d+ )?permit (\S+)(?: ge (\d+))?", line)
        if m:
            lists.setdefault(m.group(2), []).append((m.group(3), int(m.group(4)) if m.group(4) else None))
            continue
        m = re.match(r"route-map (\S+) (permit|deny) \d+", line)
        if m:
            current_map = m.group(1) if m.group(2) == "permit" else None
            if current_map:
                entries.setdefault(current_map, []).append({})
            continue
        m = re.match(r"(match interface|set extcommunity bandwidth|set community) (.+)", line)
        if m and current_map:
            entries[current_map][-1][m.group(1)] = m.group(2)
            continue
        m = re.match(r"match (?:ip|ipv6) address prefix-list (\S+)", line)
        if m and current_map:
            route_maps.setdefault(current_map, set()).add(m.group(1))
            continue
        m = re.match(r"address-family (ipv4|ipv6) unicast", line)
        if m:
            family = m.group(1)
            continue
        if line in ("exit-address-family", "exit"):
            family = None if line == "exit-address-family" else family
            continue
        m = re.match(r"redistribute connected route-map (\S+)", line)
        if m:
            redistributed[family or "ipv4"].add(m.group(1))
    missing = []
    for net in prefixes:
        host = 32 if net.version == 4 else 128
        fam = "ipv4" if net.version == 4 else "ipv6"
        want_ge = host if net.prefixlen < host else None
        names = {n for n, e in lists.items() if (str(net), want_ge) in e}
        if not names:
            ge = f" ge {host}" if want_ge else ""
            missing.append(f"a prefix-list entry 'permit {net}{ge}'")
            continue
        maps = {rm for rm, used in route_maps.items() if used & names}
        if not maps:
            missing.append(f"a route-map matching prefix-list {sorted(names)[0]} ({net})")
            continue
        if not maps & redistributed[fam]:
            missing.append(
                f"'redistribute connected route-map {sorted(maps)[0]}' under "
                f"address-family {fam} unicast ({net})"
            )
            continue
        used = [e for rm in maps & redistributed[fam] for e in entries.get(rm, [])]
        have = {(e.get("match interface"), e.get("set extcommunity bandwidth")) for e in used}
        for weight, interface in enumerate(classes, 1):
            if (interface, str(weight)) not in have:
                missing.append(
                    f"a route-map {sorted(maps)[0]} entry with 'match interface {interface}' and "
                    f"'set extcommunity bandwidth {weight}' ({net})"
                )
        tagged = any(
            e.get("match interface") == drain
            and "graceful-shutdown" in e.get("set community", "").split()
            and "additive" in e.get("set community", "").split()
            for e in used
        )
        if drain and not tagged:
            missing.append(
                f"a route-map {sorted(maps)[0]} entry with 'match interface {drain}' and "
                f"'set community graceful-shutdown additive' ({net})"
            )
    return missing
