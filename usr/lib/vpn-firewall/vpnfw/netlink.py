"""Netlink messages as the kernel sends them: a datagram into (type, body) messages, a body's
attributes into a dict. Used for rtnetlink (links.py) and for nf_tables' commit
announcements (guard.py); nothing here opens a socket.
"""

import struct

HEADER = 16  # struct nlmsghdr: length, type, flags, sequence, port


def messages(data: bytes):
    """(type, body) of each message in a datagram, body without its header."""
    offset = 0
    while offset + HEADER <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < HEADER:
            return
        yield kind, data[offset + HEADER:offset + length]
        offset += (length + 3) & ~3


def attributes(data: bytes, offset: int = 0) -> dict:
    """type -> value of the attributes from offset on (the nested and byte-order bits dropped)."""
    found = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def text(value: bytes) -> str:
    """A NUL-terminated string attribute."""
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")
