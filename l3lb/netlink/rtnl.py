"""Host-length addresses over rtnetlink, with ``struct``: the requests that add, renew and remove them
(batched, many per datagram), the dump of every address, and the notifications the monitor reads.

Why not pyroute2 here: its per-message cost (about 0.3 ms per request through its asyncio core, and more
than 0.1 ms per parsed notification or dumped address) was most of the agent's CPU at 10,000 addresses,
where renewals alone are hundreds of requests a second and each comes back as a notification; and importing
it costs the agent about 11 MiB of its resident memory, which every agent would pay since the drain
interface is made by default. So the agent makes its extra interfaces here too (RTM_NEWLINK), and never
loads pyroute2; the tests check these bytes against its codec and these dumps against its dumps.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

RTM_NEWLINK = 16
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x4, 0x10
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO = 1, 2, 6
IFA_F_NODAD = 0x02
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 3, 18, 1, 2, 1
IFF_UP = 0x1
RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x10, 0x100
FOREVER = 0xFFFFFFFF
NETLINK_ROUTE = 0

_NLMSGHDR = struct.Struct("=LHHLL")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
_CACHEINFO = struct.Struct("=IIII")  # preferred, valid, created, updated
_IFINFOMSG = struct.Struct("=BxHiII")  # family, device type, interface index, flags, flags to change


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    size = _RTATTR.size + len(payload)
    return _RTATTR.pack(size, kind) + payload + b"\0" * (_align(size) - size)


def encode(kind: int, index: int, ip: str, lifetime: int, seq: int) -> bytes:
    """An RTM_NEWADDR (add or replace, with ``lifetime`` seconds, 0 = permanent) or RTM_DELADDR request for
    ``ip`` as a host-length address on interface ``index``, asking for an acknowledgement."""
    addr = ipaddress.ip_address(ip)
    family, plen = (socket.AF_INET, 32) if addr.version == 4 else (socket.AF_INET6, 128)
    # No duplicate address detection: the address is ours by decision, and a tentative one (on a weight-
    # class veth, say) would be held back from FRR for a second or two.
    flags = IFA_F_NODAD if addr.version == 6 else 0
    body = _IFADDRMSG.pack(family, plen, flags, 0, index) + _attr(IFA_LOCAL, addr.packed)
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWADDR:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
        body += _attr(IFA_ADDRESS, addr.packed)
        if lifetime:
            body += _attr(IFA_CACHEINFO, _CACHEINFO.pack(lifetime, lifetime, 0, 0))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def encode_link(seq: int, *, index: int = 0, name: str = "", kind: str = "", peer: str = "") -> bytes:
    """An RTM_NEWLINK request, acknowledged: with ``kind``, make interface ``name`` of that kind ("dummy",
    or "veth" with its ``peer`` end beside it, which is left down), up, and only if no such name exists;
    without, set the interface ``index`` up."""
    up = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    body, flags = up, NLM_F_REQUEST | NLM_F_ACK
    if kind:
        flags |= NLM_F_CREATE | NLM_F_EXCL
        info = _attr(IFLA_INFO_KIND, kind.encode())
        if peer:  # its own ifinfomsg, not up: veth_open() refuses (ENOTCONN) until the pair is whole
            end = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, peer.encode() + b"\0")
            info += _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, end))
        body += _attr(IFLA_IFNAME, name.encode() + b"\0") + _attr(IFLA_LINKINFO, info)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWLINK, flags, seq, 0) + body


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int, memoryview]]:
    """(type, flags, sequence number, port id, payload) of each message in one datagram. A notification's
    port id is that of the socket whose request caused it, when the kernel stamps it (IPv4 addresses)."""
    view = memoryview(buf)
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        length, kind, flags, seq, port = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size:
            return
        yield kind, flags, seq, port, view[off + _NLMSGHDR.size : off + length]
        off += _align(length)


@dataclass(frozen=True, slots=True)
class Address:
    """An address notification: RTM_NEWADDR or RTM_DELADDR of ``ip``/``prefixlen`` on ``index``."""

    kind: int
    index: int
    ip: str
    prefixlen: int
    valid: int
    """Seconds of valid lifetime left, FOREVER for a permanent address."""


def parse_address(kind: int, payload: memoryview) -> Address | None:
    """The address of an RTM_NEWADDR/RTM_DELADDR payload, or None for anything else."""
    if kind not in (RTM_NEWADDR, RTM_DELADDR) or len(payload) < _IFADDRMSG.size:
        return None
    family, plen, _, _, index = _IFADDRMSG.unpack_from(payload)
    local = address = None
    valid = FOREVER
    off = _IFADDRMSG.size
    while off + _RTATTR.size <= len(payload):
        size, attr = _RTATTR.unpack_from(payload, off)
        if size < _RTATTR.size:
            break
        value = payload[off + _RTATTR.size : off + size]
        if attr == IFA_LOCAL:
            local = bytes(value)
        elif attr == IFA_ADDRESS:
            address = bytes(value)
        elif attr == IFA_CACHEINFO and len(value) >= _CACHEINFO.size:
            valid = _CACHEINFO.unpack_from(value)[1]
        off += _align(size)
    raw = local or address
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return Address(kind, index, str(ipaddress.ip_address(raw)), plen, valid)


def _errno(payload: memoryview) -> int:
    """The errno of an NLMSG_ERROR payload; 0 for an acknowledgement."""
    return -int(struct.unpack_from("=i", payload)[0])


class RequestError(OSError):
    """The kernel refused a request; ``errno`` says why."""


DUMP_ATTEMPTS = 10


class Requests:
    """A NETLINK_ROUTE socket for requests: sends many in one datagram and collects their acknowledgements."""

    BATCH = 200

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self._seq = self._seq % 0x7FFFFFFF + 1
        return self._seq

    def run(self, requests: Iterable[tuple[int, int, str, int]]) -> list[int]:
        """Sends (kind, index, ip, lifetime) requests, BATCH to a datagram; returns the errno of each, in
        order (0: done). A removal and an add of the same IP right after it (a move to another interface)
        always go in one datagram: the kernel carries out a datagram's requests in order in one system
        call, so no crash of ours can leave the address on neither interface."""
        codes: list[int] = []
        pending: dict[int, int] = {}
        chunk: list[bytes] = []
        last: tuple[int, str] | None = None
        for kind, index, ip, lifetime in requests:
            if len(chunk) >= self.BATCH and not (kind == RTM_NEWADDR and last == (RTM_DELADDR, ip)):
                self._exchange(chunk, pending, codes)
                chunk = []
            seq = self._next_seq()
            pending[seq] = len(codes)
            codes.append(0)
            chunk.append(encode(kind, index, ip, lifetime, seq))
            last = (kind, ip)
        if chunk:
            self._exchange(chunk, pending, codes)
        return codes

    def _exchange(self, chunk: list[bytes], pending: dict[int, int], codes: list[int]) -> None:
        self.sock.send(b"".join(chunk))
        while pending:
            for kind, _, seq, _, payload in messages(self.sock.recv(1 << 16)):
                if kind == NLMSG_ERROR and seq in pending:
                    codes[pending.pop(seq)] = _errno(payload)

    def link(self, *, index: int = 0, name: str = "", kind: str = "", peer: str = "") -> int:
        """One RTM_NEWLINK request (``encode_link``); its errno (0: done)."""
        seq = self._next_seq()
        codes = [0]
        self._exchange([encode_link(seq, index=index, name=name, kind=kind, peer=peer)], {seq: 0}, codes)
        return codes[0]

    @property
    def port_id(self) -> int:
        """The socket's netlink port id: the kernel stamps the IPv4 address notifications that our requests
        cause with it (not IPv6's)."""
        return int(self.sock.getsockname()[0])

    def addresses(self) -> list[Address]:
        """Every address of every interface, by one RTM_GETADDR dump; dumped again if a change interrupted
        it (the kernel then flags it as possibly inconsistent), at most DUMP_ATTEMPTS times in all: under
        changes that never stop, RequestError (EAGAIN) rather than a loop without end."""
        for _ in range(DUMP_ATTEMPTS):
            seq = self._next_seq()
            body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            self.sock.send(
                _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                + body
            )
            found: list[Address] = []
            interrupted = done = False
            while not done:
                for kind, flags, got, _, payload in messages(self.sock.recv(1 << 16)):
                    if got != seq:
                        continue  # a late acknowledgement of something else
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    if kind == NLMSG_DONE:
                        done = True
                    elif kind == NLMSG_ERROR:
                        if code := _errno(payload):
                            raise RequestError(code, f"cannot dump addresses: {os.strerror(code)}")
                    elif (addr := parse_address(kind, payload)) is not None:
                        found.append(addr)
            if not interrupted:
                return found
        raise RequestError(errno.EAGAIN, f"the address dump was interrupted {DUMP_ATTEMPTS} times in a row")


MONITOR_BUFFER = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def monitor_socket() -> socket.socket:
    """A NETLINK_ROUTE socket subscribed to IPv4 and IPv6 address notifications, with a 4 MiB buffer:
    SO_RCVBUFFORCE (CAP_NET_ADMIN, which the agent has) goes past net.core.rmem_max, which silently caps
    SO_RCVBUF (212,992 bytes by default, a few thousand notifications)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, MONITOR_BUFFER)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MONITOR_BUFFER)
    sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    return sock


GONE = (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH)
"""What the kernel answers to the removal of an address that is not there."""
