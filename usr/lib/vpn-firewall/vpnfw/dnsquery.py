"""A minimal DNS client for `vpn-firewall refresh`: A and AAAA over UDP to named servers.

The system resolver cannot be told which server to ask, and refresh must ask exactly the
servers it opened the firewall for.
"""

import os
import socket
import struct

TYPES = {"A": 1, "AAAA": 28}
TIMEOUT = 2.0


class DNSError(Exception):
    pass


def query_packet(name: str, qtype: int, ident: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, i: int) -> int:
    while True:
        if i >= len(data):
            raise DNSError("truncated answer")
        length = data[i]
        if length & 0xC0 == 0xC0:
            return i + 2
        if length == 0:
            return i + 1
        i += 1 + length


def parse_answer(data: bytes, ident: int, qtype: int) -> list:
    if len(data) < 12:
        raise DNSError("short answer")
    rid, flags, qd, an = struct.unpack("!HHHH", data[:8])
    if rid != ident:
        raise DNSError("answer to another query")
    if flags & 0x0200:
        raise DNSError("answer truncated (TCP is not supported)")
    rcode = flags & 0x000F
    if rcode == 3:
        return []  # no such name
    if rcode != 0:
        raise DNSError(f"server answered with error code {rcode}")
    i = 12
    for _ in range(qd):
        i = _skip_name(data, i) + 4
    out = []
    for _ in range(an):
        i = _skip_name(data, i)
        rtype, _, _, length = struct.unpack("!HHIH", data[i:i + 10])
        rdata = data[i + 10:i + 10 + length]
        i += 10 + length
        if rtype == qtype == 1 and length == 4:
            out.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == qtype == 28 and length == 16:
            out.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return out


def resolve(name: str, servers: list) -> list:
    """The A and AAAA addresses of `name`, from the first server that answers both."""
    errors = []
    for server in servers:
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        try:
            addresses = []
            for qtype in TYPES.values():
                ident = struct.unpack("!H", os.urandom(2))[0]
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.settimeout(TIMEOUT)
                    s.connect((server, 53))
                    s.send(query_packet(name, qtype, ident))
                    addresses += parse_answer(s.recv(4096), ident, qtype)
            return addresses
        except (OSError, DNSError) as e:
            errors.append(f"{server}: {e}")
    raise DNSError("; ".join(errors) or "no DNS server to ask")


def nameservers(path: str) -> list:
    """The name servers a resolv.conf names, each once, in its order (a zone index dropped);
    none when it cannot be read."""
    found = []
    try:
        with open(path) as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    address = words[1].split("%")[0]
                    if address not in found:
                        found.append(address)
    except OSError:
        pass
    return found
