"""The VPN servers that VPN clients' own configs name: $VPN_CLIENT_CONFIGS.

Providers ship hundreds of OpenVPN and WireGuard files; copying every server into
$VPN_SERVERS by hand is where mistakes happen. Each file matched by the patterns is read:

- OpenVPN: 'remote HOST [PORT] [PROTO]', with the file's 'port'/'rport' and 'proto' as
  defaults (1194, udp), inside '<connection>' blocks too (which take the file's values as
  their defaults); inline blocks such as '<key>' are skipped unread.
- WireGuard: 'Endpoint = HOST:PORT' in each [Peer] (udp; IPv6 in brackets).
- NetworkManager keyfiles and systemd-networkd .netdev files: see keyfiles.py.

Host names go through the pinning like any in $VPN_SERVERS: never resolved at boot. A
'remote' or 'Endpoint' that cannot be understood is refused with the VPN config's own
file:line. The files are trusted like ours (root's, not writable by others), since an
endpoint opens a way out; keys in them are never printed: only the values of the lines
read here appear in messages.
"""

import os
import re
from collections import namedtuple

from . import inputs, keyfiles, values as V
from .errors import ConfigError, Pos
from .keyfiles import OPENVPN_PROTOS
from .parser import Atom

DEFAULT_PORT, DEFAULT_PROTO = "1194", "udp"


# endpoints: what the files name, in file order; wireguard: whether any of them is a
# WireGuard tunnel's (its kernel socket has no owner for $VPN_USER to match)
Servers = namedtuple("Servers", "endpoints wireguard")


def endpoints(patterns, warn) -> Servers:
    """The Endpoints the files matching the patterns (atoms) name."""
    found, wireguard = [], False
    for pattern in patterns:
        paths = inputs.glob(pattern.text)
        if not paths:
            warn(f"{pattern.pos}: warning: $VPN_CLIENT_CONFIGS: {pattern.text!r} matches no file")
            continue
        named = []
        for path in paths:
            if os.path.isdir(path):
                continue
            servers = read_file(path)
            named += servers.endpoints
            wireguard = wireguard or (servers.wireguard and bool(servers.endpoints))
        if not named:
            warn(f"{pattern.pos}: warning: $VPN_CLIENT_CONFIGS: the files that {pattern.text!r} matches name no VPN "
                 "server (no OpenVPN 'remote', WireGuard 'Endpoint', NetworkManager VPN or WireGuard peer)")
        found += named
    return Servers(tuple(found), wireguard)


def read_file(path: str) -> Servers:
    try:
        st = inputs.owner(path)
        text = inputs.read(path).decode("utf-8", "replace")
    except OSError as e:
        raise ConfigError(Pos(path, 1, 1), f"cannot read this VPN client config: {e.strerror}") from None
    if inputs.untrusted(st):
        raise ConfigError(Pos(path, 1, 1), "a VPN client config that others may write names servers for the kill "
                                           "switch: it must be root's and not writable by group or others")
    def endpoint(line_no, column, host, port, proto):
        return _endpoint(path, line_no, column, host, port, proto)
    if keyfiles.is_networkmanager(text):
        return Servers(keyfiles.networkmanager(path, text, endpoint), keyfiles.is_nm_wireguard(text))
    if keyfiles.is_networkd(text):
        return Servers(keyfiles.networkd(path, text, endpoint), True)
    if re.search(r"(?mi)^\s*\[peer\]", text):
        return Servers(_wireguard(path, text), True)
    return Servers(_openvpn(path, text), False)


def _endpoint(path, line_no, column, host, port, proto):
    """An Endpoint from parts of a VPN config, its errors placed in that config."""
    shown = f"[{host}]" if ":" in host else host
    atom = Atom("word", f"{shown}:{port}/{proto}", Pos(path, line_no, column))
    try:
        return V.endpoint(atom)
    except ConfigError as e:
        raise ConfigError(atom.pos, f"{e.message} (in a VPN client config)") from None


def _openvpn(path: str, text: str) -> list:
    defaults = {"port": DEFAULT_PORT, "proto": DEFAULT_PROTO}
    remotes, blocks, block, inline = [], [], None, None
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if inline:  # a certificate or key: never looked at
            if line.lower() == f"</{inline}>":
                inline = None
            continue
        if not line or line[0] in "#;":
            continue
        words = line.split()
        keyword = words[0].lower()
        if keyword == "<connection>":
            block = {"remotes": [], "values": {}}
            continue
        if keyword == "</connection>":
            if block is None:
                raise ConfigError(Pos(path, line_no, 1), "'</connection>' without '<connection>'")
            blocks.append(block)
            block = None
            continue
        m = re.match(r"^<([a-z0-9-]+)>$", keyword)
        if m:
            inline = m.group(1)
            continue
        values = block["values"] if block is not None else defaults
        column = len(raw) - len(raw.lstrip()) + 1
        if keyword in ("port", "rport"):
            values["port"] = _port(path, line_no, column, words)
        elif keyword == "proto":
            values["proto"] = _proto(path, line_no, column, words)
        elif keyword == "remote":
            if len(words) < 2 or len(words) > 4:
                raise ConfigError(Pos(path, line_no, column), "expected 'remote HOST [PORT] [PROTO]'")
            entry = (line_no, column, words[1], words[2] if len(words) > 2 else None,
                     _proto(path, line_no, column, ["proto", words[3]]) if len(words) > 3 else None)
            (block["remotes"] if block is not None else remotes).append(entry)
    if block is not None:
        raise ConfigError(Pos(path, len(text.splitlines()), 1), "a '<connection>' block is never closed")
    found = []
    for values, entries in [(defaults, remotes)] + [({**defaults, **b["values"]}, b["remotes"]) for b in blocks]:
        for line_no, column, host, port, proto in entries:
            if port is not None and not port.isdigit():
                raise ConfigError(Pos(path, line_no, column), f"expected a port after the host, got {port!r}")
            found.append(_endpoint(path, line_no, column, host, port or values["port"], proto or values["proto"]))
    return found


def _port(path, line_no, column, words) -> str:
    if len(words) != 2 or not words[1].isdigit():
        raise ConfigError(Pos(path, line_no, column), f"expected '{words[0]} NUMBER'")
    return words[1]


def _proto(path, line_no, column, words) -> str:
    if len(words) < 2 or words[1].lower() not in OPENVPN_PROTOS:
        if len(words) >= 2 and words[1].lower() == "tcp-server":
            raise ConfigError(Pos(path, line_no, column), "'proto tcp-server' is a server's config, not a client's")
        raise ConfigError(Pos(path, line_no, column), f"expected a protocol ({', '.join(OPENVPN_PROTOS)})")
    return OPENVPN_PROTOS[words[1].lower()]


def _wireguard(path: str, text: str) -> list:
    found, section = [], None
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            section = line.lower()
            continue
        key, sep, value = line.partition("=")
        if section != "[peer]" or key.strip().lower() != "endpoint":
            continue  # keys among them: not read further, never printed
        value = value.strip()
        column = raw.index(value) + 1 if value and value in raw else 1
        m = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]]+)):(\d{1,5})$", value)
        if not sep or not m:
            raise ConfigError(Pos(path, line_no, column), f"expected 'Endpoint = HOST:PORT' ([IPv6]:PORT), got {value!r}")
        found.append(_endpoint(path, line_no, column, m.group(1) or m.group(2), m.group(3), "udp"))
    return found
