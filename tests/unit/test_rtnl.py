"""The hot-path rtnetlink codec (l3lb/netlink/rtnl.py) against pyroute2's own: what we encode, pyroute2
decodes to the same request; what pyroute2 encodes as a notification, we parse to the same address."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from l3lb.netlink import rtnl

ips = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(socket.inet_ntoa(struct.pack("!I", n)))),
    st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b)),
)


@settings(max_examples=200, deadline=None)
@given(ips, st.integers(1, 2**31 - 1), st.sampled_from([0, 3, 60, 3600]), st.integers(1, 2**31 - 1))
def test_requests_decode_with_pyroute2_as_intended(ip: str, index: int, lifetime: int, seq: int) -> None:
    for kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
        data = rtnl.encode(kind, index, ip, lifetime, seq)
        msg = ifaddrmsg(data)
        msg.decode()
        assert msg["header"]["type"] == kind and msg["header"]["sequence_number"] == seq
        assert msg["header"]["length"] == len(data)
        assert msg["index"] == index and msg["prefixlen"] == (128 if ":" in ip else 32)
        assert msg.get_attr("IFA_LOCAL") == ip
        flags = msg["header"]["flags"]
        assert flags & rtnl.NLM_F_ACK and flags & rtnl.NLM_F_REQUEST
        if kind == rtnl.RTM_NEWADDR:
            assert flags & rtnl.NLM_F_REPLACE and flags & rtnl.NLM_F_CREATE
            assert msg.get_attr("IFA_ADDRESS") == ip
            info = msg.get_attr("IFA_CACHEINFO")
            assert (
                (info is None) if lifetime == 0 else (info["ifa_valid"] == info["ifa_preferred"] == lifetime)
            )


@settings(max_examples=200, deadline=None)
@given(ips, st.integers(1, 2**31 - 1), st.sampled_from([None, 0, 17, rtnl.FOREVER]), st.booleans())
def test_notifications_encoded_by_pyroute2_parse_the_same(ip: str, index: int, valid, new: bool) -> None:  # type: ignore[no-untyped-def]
    msg = ifaddrmsg()
    v6 = ":" in ip
    msg["family"] = socket.AF_INET6 if v6 else socket.AF_INET
    msg["prefixlen"] = 128 if v6 else 32
    msg["index"] = index
    attrs = [("IFA_ADDRESS", ip)] + ([] if v6 else [("IFA_LOCAL", ip)])
    if valid is not None:
        attrs.append(
            ("IFA_CACHEINFO", {"ifa_preferred": valid, "ifa_valid": valid, "cstamp": 1, "tstamp": 2})
        )
    msg["attrs"] = attrs
    msg["header"]["type"] = rtnl.RTM_NEWADDR if new else rtnl.RTM_DELADDR
    msg.encode()
    # two notifications in one datagram, as the kernel sends them
    ((k1, _, _, _, p1), (k2, _, _, _, p2)) = list(rtnl.messages(msg.data + msg.data))
    for kind, payload in ((k1, p1), (k2, p2)):
        addr = rtnl.parse_address(kind, payload)
        assert addr is not None
        assert addr == rtnl.Address(
            msg["header"]["type"], index, ip, msg["prefixlen"], rtnl.FOREVER if valid is None else valid
        )


def test_other_messages_are_not_addresses() -> None:
    assert rtnl.parse_address(rtnl.NLMSG_ERROR, memoryview(b"\0" * 20)) is None
    assert rtnl.parse_address(rtnl.RTM_NEWADDR, memoryview(b"\0" * 3)) is None


class AlwaysInterrupted:
    """A socket whose every dump the kernel flags as interrupted (addresses changing without pause)."""

    def __init__(self) -> None:
        self.dumps = 0
        self.seq = 0

    def send(self, data: bytes) -> None:
        self.dumps += 1
        assert self.dumps < 1000, "the dump is retried without end"
        self.seq = struct.unpack_from("=LHHLL", data)[3]

    def recv(self, size: int) -> bytes:
        done = struct.pack("=LHHLL", 20, rtnl.NLMSG_DONE, rtnl.NLM_F_DUMP_INTR, self.seq, 0) + b"\0" * 4
        return done

    def close(self) -> None:
        pass


def test_an_address_dump_interrupted_again_and_again_gives_up() -> None:
    """A dump the kernel flags as interrupted is read again, but not forever: after DUMP_ATTEMPTS an error
    (EAGAIN) that fails the sync, which is retried with backoff."""
    r = rtnl.Requests()
    r.sock.close()
    r.sock = fake = AlwaysInterrupted()  # type: ignore[assignment]
    with pytest.raises(rtnl.RequestError) as err:
        r.addresses()
    assert err.value.errno == errno.EAGAIN and fake.dumps == rtnl.DUMP_ATTEMPTS
