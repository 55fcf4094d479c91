"""The kernel's announcements of nf_tables commits (netlink, group NFNLGRP_NFTABLES): who
committed, which families the changes touched, which tables they deleted. The guard sleeps
on them with iptables-nft."""

import socket
import struct

from . import netlink

NETLINK_NETFILTER, NFNLGRP_NFTABLES = 12, 7
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN = 10, 15
NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 2, 3


def open_events() -> socket.socket:
    """A netlink socket that receives every nf_tables commit of this network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    return sock


def committers(datagram: bytes) -> list:
    """(pid, process name) of each commit (NEWGEN message) in a netlink datagram."""
    found = []
    for kind, body in netlink.messages(datagram):
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            attrs = netlink.attributes(body, 4)  # after struct nfgenmsg
            pid = attrs.get(NFTA_GEN_PROC_PID)
            found.append((struct.unpack("!I", pid)[0] if pid and len(pid) == 4 else None,
                          netlink.text(attrs[NFTA_GEN_PROC_NAME]) if NFTA_GEN_PROC_NAME in attrs else "?"))
    return found


# nfgenmsg's family: what each kind of table can hold of ours
FAMILIES_OF = {2: ("ip",), 10: ("ip6",), 1: ("ip", "ip6")}  # NFPROTO_IPV4, NFPROTO_IPV6, NFPROTO_INET
EVERY_FAMILY = frozenset(("ip", "ip6"))


def changed_families(datagram: bytes) -> set:
    """The families whose tables the announced changes touched (each message's nfgenmsg);
    a commit announced without any (only its NEWGEN) counts as touching every family."""
    found, commits = set(), False
    for kind, body in netlink.messages(datagram):
        if kind >> 8 != NFNL_SUBSYS_NFTABLES:
            continue
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            commits = True
        elif body:
            found.update(FAMILIES_OF.get(body[0], ()))
    return found if found or not commits else set(EVERY_FAMILY)


def drain(sock):
    """(every commit announced since the last call, the families they touched); an
    overflowed socket counts as an unknown commit that touched every family."""
    found, families = [], set()
    while True:
        try:
            datagram = sock.recv(1 << 16)
        except BlockingIOError:
            return found, families
        except OSError:  # ENOBUFS: announcements were lost, so something changed
            found.append((None, "?"))
            families |= EVERY_FAMILY
            continue
        found += committers(datagram)
        families |= changed_families(datagram)
