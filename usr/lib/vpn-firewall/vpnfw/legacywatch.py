"""The legacy backend announces nothing: a cheap look at its tables, many times a second.

getsockopt(IPT_SO_GET_INFO) tells each table's size, number of entries and hook offsets
without copying a rule, and without a process: enough to see a flush, a chain deleted or
added, a rule inserted. The guard compares the rules in full when that look changed, and
once a second anyway (a rule replaced by another of the very same size changes nothing
this look can see). Only the tables that exist are asked (/proc/net/ip_tables_names):
asking for another would create it.
"""

import ctypes
import os
import socket

IPT_SO_GET_INFO = 64  # IPT_BASE_CTL; ip6tables' IP6T_SO_GET_INFO has the same number
INFO_SIZE = 84  # struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size
LEVEL = {"ip": socket.IPPROTO_IP, "ip6": socket.IPPROTO_IPV6}
NAMES = {"ip": "ip_tables_names", "ip6": "ip6_tables_names"}


class Watcher:
    """fingerprint(): what the legacy tables look like now, cheaply; raises OSError when it
    cannot look (no raw socket: no CAP_NET_RAW), so that the guard compares in full.

    A look costs about 20 us of CPU here (the names files kept open and read again from the
    start, one buffer per table kept), so the guard can look every 25 ms for what looking
    every 50 ms used to cost."""

    def __init__(self, families, proc="/proc"):
        self.proc = proc
        self.getsockopt = ctypes.CDLL(None, use_errno=True).getsockopt
        self.socks, self.names, self.buffers = {}, {}, {}
        self.size = ctypes.c_uint(INFO_SIZE)
        for family in families:
            af = socket.AF_INET if family == "ip" else socket.AF_INET6
            self.socks[family] = socket.socket(af, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW)
        if any(isinstance(part, int) for part in self.fingerprint()):  # here, not later, when it cannot work
            err = next(part for part in self.fingerprint() if isinstance(part, int))
            raise OSError(err, os.strerror(err))

    def fingerprint(self) -> tuple:
        parts = []
        for family, sock in self.socks.items():
            tables = self._tables(family)
            parts.append((family, tables))
            parts += [self._info(sock, family, table) for table in tables.split()]
        return tuple(parts)

    def _tables(self, family) -> bytes:
        """The names of the family's tables that exist (the file is absent until the first)."""
        fd = self.names.get(family)
        if fd is None:
            try:
                fd = self.names[family] = os.open(os.path.join(self.proc, "net", NAMES[family]),
                                                  os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return b""
        try:
            return os.pread(fd, 4096, 0)
        except OSError:
            return b""

    def _info(self, sock, family: str, table: bytes):
        """The table's info, or the errno when it cannot be read (a table gone meanwhile)."""
        buf = self.buffers.get((family, table))
        if buf is None:
            buf = self.buffers[(family, table)] = ctypes.create_string_buffer(table[:31], INFO_SIZE)
        self.size.value = INFO_SIZE
        if self.getsockopt(sock.fileno(), LEVEL[family], IPT_SO_GET_INFO, buf, ctypes.byref(self.size)) != 0:
            return ctypes.get_errno()
        return buf.raw[:self.size.value]

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        for fd in self.names.values():
            os.close(fd)
