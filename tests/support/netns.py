"""Network namespaces for tests: uniquely named, ``lo`` up, processes run inside, addresses read back,
and always removed again.

Names are ``l3lb-<pid>-<random>``, so ``sweep_stale()`` can remove namespaces whose creating process is
gone (a test run killed with SIGKILL). Nothing here changes the root namespace's addresses or routes.

A process inside a namespace cannot reach the root namespace's 127.0.0.1. ``ApiRelay`` bridges that
without touching the root namespace's network: socat in the root namespace listens on a unix socket and
connects to the apiserver; socat in each namespace listens on 127.0.0.1 at the apiserver's port and
connects to that socket. A kubeconfig for ``https://127.0.0.1:PORT`` then works inside and outside.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path

from testenv import pid_alive, spawn, stop_pid

PREFIX = "l3lb-"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def sweep_stale() -> list[str]:
    """Removes namespaces of this naming scheme whose creating process no longer runs."""
    removed = []
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-[0-9a-f]+", name)
        if m and not pid_alive(int(m.group(1))):
            ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


class NetNS:
    """One network namespace. ``with NetNS() as ns:`` guarantees its removal and its processes' end."""

    def __init__(self, logdir: str | os.PathLike[str] | None = None) -> None:
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.logdir = Path(logdir) if logdir else None
        self.procs: list[subprocess.Popen] = []
        ip("netns", "add", self.name)
        try:
            ip("-n", self.name, "link", "set", "lo", "up")
            self.sysctl("net.ipv6.conf.all.accept_dad", "0")
            self.sysctl("net.ipv6.conf.default.accept_dad", "0")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> NetNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(argv), check=check, capture_output=True, text=True, timeout=timeout, env=env
        )

    def veth(self, name: str, peer: NetNS, peer_name: str) -> None:
        """A veth pair created inside this namespace with its peer end placed straight into ``peer`` (so it
        never appears in the root namespace), both ends up."""
        ip(
            "-n",
            self.name,
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name,
        )
        ip("-n", self.name, "link", "set", name, "up")
        ip("-n", peer.name, "link", "set", peer_name, "up")

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def popen(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Starts ``argv`` inside the namespace, logging to ``<logdir>/<ns>-<name>.log``; stopped on close."""
        logdir = self.logdir or Path("/tmp")
        # Temporary files go with the logs, so a process killed before its own clean-up leaves nothing
        # behind in /tmp.
        env = {**os.environ, "TMPDIR": str(logdir), **(env or {})}
        proc = spawn(self.argv(argv), logdir / f"{self.name}-{name}.log", detach=False, env=env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        stop_pid(proc.pid, proc, timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def addresses(self, dev: str = "lo") -> list[dict]:
        """``ip -j addr`` entries of ``dev``: each with local, prefixlen, family, valid_life_time, ..."""
        out = ip("-j", "-n", self.name, "addr", "show", "dev", dev).stdout
        data = json.loads(out or "[]")
        return data[0]["addr_info"] if data else []

    def host_addresses(self, dev: str = "lo") -> set[str]:
        """The /32 and /128 addresses on ``dev``, loopback's own excluded."""
        return {
            a["local"]
            for a in self.addresses(dev)
            if a["prefixlen"] in (32, 128) and a["local"] not in ("127.0.0.1", "::1")
        }

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_pid(proc.pid, proc)
        self.procs.clear()
        ip("netns", "del", self.name, check=False)


class ApiRelay:
    """Gives namespaces a path to an apiserver on the root namespace's 127.0.0.1:``port``."""

    def __init__(self, port: int, workdir: str | os.PathLike[str]) -> None:
        self.port = port
        self.workdir = Path(workdir)
        self.socket = self.workdir / f"api-{port}.sock"
        self.socket.unlink(missing_ok=True)
        self.proc = spawn(
            ["socat", f"UNIX-LISTEN:{self.socket},fork,mode=600", f"TCP:127.0.0.1:{port},nodelay"],
            self.workdir / "relay-root.log",
            detach=False,
        )

    def attach(self, ns: NetNS) -> subprocess.Popen:
        """Starts the namespace's end: 127.0.0.1:``port`` inside ``ns`` leads to the apiserver."""
        proc = ns.popen(
            [
                "socat",
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr,nodelay",
                f"UNIX-CONNECT:{self.socket}",
            ],
            "relay",
        )
        ns.run(["socat", "-u", "OPEN:/dev/null", f"TCP:127.0.0.1:{self.port},retry=100,interval=0.05"])
        return proc

    def close(self) -> None:
        stop_pid(self.proc.pid, self.proc)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


def enter_netns(name: str) -> None:
    """Moves the calling thread (only it) into network namespace ``name``."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
    finally:
        os.close(fd)


class NetlinkWatch:
    """Netlink messages of a namespace, handled with their arrival time (``time.monotonic()``).

    A thread enters the namespace (setns affects only the calling thread) and opens netlink sockets
    there, so the observer needs no process inside the namespace and adds no delay of its own. Each
    datagram is timed as it is received, before pyroute2 parses it (about 0.1 ms a message), so a burst
    of other notifications (renewals) cannot make a later message look late. Subclasses implement
    ``handle(msg, now, ipr)``; ``ipr`` is a second socket for queries.
    """

    groups = 0

    def __init__(self, ns: NetNS) -> None:
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(ns.name,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error:
            raise RuntimeError(f"could not watch netlink in {ns.name}: {self._error}")

    def _run(self, name: str) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        try:
            enter_netns(name)
            events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
            events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            events.bind((0, self.groups))
            query = IPRoute()
            self.setup(query)
        except BaseException as err:
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        marshal = MarshalRtnl()
        while True:
            data = events.recv(1 << 20)
            now = time.monotonic()
            with self._cond:
                for msg in marshal.parse(data):
                    self.handle(msg, now, query)
                self._cond.notify_all()

    def setup(self, query: object) -> None:
        """Runs once in the namespace before events flow."""

    def handle(self, msg: dict, now: float, query: object) -> None:
        raise NotImplementedError

    def wait_until(self, check, timeout: float):  # type: ignore[no-untyped-def]
        """Waits until ``check()`` (called under the lock) returns something other than None; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = check()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s")
                self._cond.wait(left)


class AddressEvents(NetlinkWatch):
    """Address additions and removals in a namespace: ``events`` holds (time, "add"|"del", ip)."""

    def __init__(self, ns: NetNS) -> None:
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

        self.groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        self.events: list[tuple[float, str, str]] = []
        super().__init__(ns)

    def handle(self, msg: dict, now: float, query: object) -> None:
        ip = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        kind = {"RTM_NEWADDR": "add", "RTM_DELADDR": "del"}.get(msg.get("event"))
        if ip and kind:
            self.events.append((now, kind, ip))

    def wait(self, kind: str, ip: str, after: float, timeout: float = 10.0) -> float:
        """The time of the first ``kind`` event for ``ip`` at or after ``after``."""

        def first() -> float | None:
            start = bisect.bisect_left(self.events, after, key=lambda e: e[0])  # events come in time order
            return next((t for t, k, a in self.events[start:] if k == kind and a == ip), None)

        return self.wait_until(first, timeout)
