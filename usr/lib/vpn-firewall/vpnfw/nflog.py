"""Blocked packets by netlink (NFLOG), for `vpn-firewall monitor`: our chains send what they
block (rate-limited) to GROUP; this reads it. Nothing listening, the kernel drops the copy.
"""

import errno
import os
import socket
import struct

from . import netlink

GROUP = 5650
SIZE = 128  # bytes of each packet copied: its headers
LIMIT = ("limit", ((False, "--limit", "20/sec"), (False, "--limit-burst", "40")))
NETLINK_NETFILTER, NFNL_SUBSYS_ULOG = 12, 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND, NFULNL_COPY_PACKET = 1, 2
NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_UID = 4, 5, 9, 10, 11
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}


def options(word: str) -> tuple:
    """The NFLOG target's options for a chain's blocked packets (WORD: the direction)."""
    return (("--nflog-prefix", word), ("--nflog-group", str(GROUP)), ("--nflog-size", str(SIZE)))


def _attr(kind, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * ((4 - length % 4) % 4)


def _config(attrs: bytes, family=0) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(GROUP)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, 0x1 | 0x4, 0, 0) + body


def open_group() -> socket.socket:
    """A socket bound to GROUP: packets copied up to SIZE (the kernel adds the sending
    socket's uid when there is one)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    for attrs in (_attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)),
                  _attr(NFULA_CFG_MODE, struct.pack("!IBx", SIZE, NFULNL_COPY_PACKET))):
        sock.send(_config(attrs))
        for kind, body in netlink.messages(sock.recv(65536)):
            if kind == 2 and struct.unpack_from("=i", body)[0] < 0:  # NLMSG_ERROR with an error
                err = -struct.unpack_from("=i", body)[0]
                sock.close()
                # EPERM: the group has another listener (one per namespace), or we are not root
                why = (f"another program listens to NFLOG group {GROUP} (ulogd2, another monitor), or not root"
                       if err == errno.EPERM else os.strerror(err))
                raise OSError(err, f"NFLOG: the kernel refused the binding: {why}")
    return sock


def packets(datagram: bytes) -> list:
    """Each blocked packet in a datagram as a dict: direction (the rule's prefix), family,
    protocol, destination, port, uid (None: not known), in/out interface index."""
    found = []
    for kind, body in netlink.messages(datagram):
        if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET or len(body) < 4:
            continue
        family = body[0]
        attrs = netlink.attributes(body, 4)
        payload = attrs.get(NFULA_PAYLOAD, b"")
        proto, dst, port = _headers(family, payload)
        uid = attrs.get(NFULA_UID)
        found.append({"direction": netlink.text(attrs.get(NFULA_PREFIX, b"")), "family": "ip6" if family == 10 else "ip",
                      "protocol": proto, "destination": dst, "port": port,
                      "uid": struct.unpack("!I", uid)[0] if uid and len(uid) == 4 else None,
                      "in": _index(attrs.get(NFULA_IFINDEX_INDEV)), "out": _index(attrs.get(NFULA_IFINDEX_OUTDEV))})
    return found


def _index(value):
    return struct.unpack("!I", value)[0] if value and len(value) == 4 else None


def _headers(family, p: bytes):
    """(protocol, destination, port) from an IP packet's start."""
    try:
        if family == 10 and len(p) >= 40:
            proto, dst, l4 = p[6], socket.inet_ntop(socket.AF_INET6, p[24:40]), p[40:]
            if proto == 0 and len(l4) >= 2:  # hop-by-hop options (MLD carries them): what follows
                proto, l4 = l4[0], l4[(l4[1] + 1) * 8:]
        elif family == 2 and len(p) >= 20:
            proto, dst, l4 = p[9], socket.inet_ntop(socket.AF_INET, p[16:20]), p[(p[0] & 0x0F) * 4:]
        else:
            return None, None, None
    except (ValueError, OSError):
        return None, None, None
    port = struct.unpack("!H", l4[2:4])[0] if proto in (6, 17) and len(l4) >= 4 else None
    return PROTOCOLS.get(proto, str(proto)), dst, port
