"""The VPN servers in NetworkManager's keyfiles and systemd-networkd's .netdev files, for
$VPN_CLIENT_CONFIGS (clientconfigs.py reads the files and hands their text here).

- NetworkManager (/etc/NetworkManager/system-connections/*.nmconnection):
  an OpenVPN connection's [vpn] 'remote' (HOST[:PORT[:PROTO]], several separated by
  commas or spaces; 'port' and 'proto-tcp' give the defaults, 1194 and udp);
  an OpenConnect connection's [vpn] 'gateway' (HOST[:PORT], tcp and udp, 443: TLS and DTLS);
  a WireGuard connection's 'endpoint' in each [wireguard-peer.KEY].
- systemd-networkd (/etc/systemd/network/*.netdev): 'Endpoint' in each [WireGuardPeer].

Both are INI files; errors name the file's own line and column. A connection of another
kind (another VPN plugin, Ethernet, Wi-Fi) names no server and is skipped; secrets are
never read into a message: only the values of the keys named here are.
"""

from .errors import ConfigError, Pos

OPENVPN = "org.freedesktop.NetworkManager.openvpn"
OPENCONNECT = "org.freedesktop.NetworkManager.openconnect"
# OpenVPN's protocol names, as OpenVPN and NetworkManager's plugin take them (clientconfigs
# reads OpenVPN's own files with it too)
OPENVPN_PROTOS = {"udp": "udp", "udp4": "udp", "udp6": "udp", "tcp": "tcp", "tcp4": "tcp", "tcp6": "tcp",
                  "tcp-client": "tcp", "tcp4-client": "tcp", "tcp6-client": "tcp"}


def is_networkmanager(text: str) -> bool:
    return any(line.strip() == "[connection]" for line in text.splitlines())


def is_nm_wireguard(text: str) -> bool:
    return any(section == "connection" and key == "type" and value == "wireguard"
               for section, key, value, _, _ in entries(text))


def is_networkd(text: str) -> bool:
    return any(line.strip() in ("[NetDev]", "[WireGuardPeer]") for line in text.splitlines())


def entries(text: str):
    """(section, key, value, line, column of the value) of each key = value line."""
    section = None
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if sep:
            value = value.strip()
            after = raw.index("=") + 1
            column = (raw.index(value, after) if value else after) + 1
            yield section, key.strip(), value, line_no, column


def networkmanager(path: str, text: str, endpoint) -> list:
    """endpoint(line, column, host, port, proto) -> Endpoint, its errors placed in the file."""
    values = {}
    for section, key, value, line_no, column in entries(text):
        values.setdefault((section, key), (value, line_no, column))
    kind = values.get(("connection", "type"), ("",))[0]
    if kind == "wireguard":
        found = []
        for section, key, value, line_no, column in entries(text):
            if section and section.startswith("wireguard-peer.") and key == "endpoint":
                found += _host_port(path, value, line_no, column, endpoint, ("udp",), None)
        return found
    if kind != "vpn":
        return []
    service = values.get(("vpn", "service-type"), ("",))[0]
    if service == OPENVPN and ("vpn", "remote") in values:
        return _openvpn_remotes(path, values, endpoint)
    if service == OPENCONNECT and ("vpn", "gateway") in values:
        value, line_no, column = values[("vpn", "gateway")]
        return _host_port(path, value, line_no, column, endpoint, ("tcp", "udp"), "443")
    return []


def networkd(path: str, text: str, endpoint) -> list:
    found = []
    for section, key, value, line_no, column in entries(text):
        if section == "WireGuardPeer" and key == "Endpoint":
            found += _host_port(path, value, line_no, column, endpoint, ("udp",), None)
    return found


def _host_port(path, value, line_no, column, endpoint, protos, default_port) -> list:
    """HOST:PORT, [IPv6]:PORT (or HOST alone with a default port) as one endpoint per protocol."""
    host, port = _split_host_port(value)
    port = port or default_port
    if not host or not port or not port.isdigit():
        raise ConfigError(Pos(path, line_no, column), f"expected HOST:PORT ([IPv6]:PORT), got {value!r}")
    return [endpoint(line_no, column, host, port, proto) for proto in protos]


def _split_host_port(value: str):
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else (None if not rest else "")
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, None  # a bare host, or a bare IPv6 address


def _openvpn_remotes(path, values, endpoint) -> list:
    value, line_no, column = values[("vpn", "remote")]
    default_port = values.get(("vpn", "port"), ("1194",))[0] or "1194"
    default_proto = "tcp" if values.get(("vpn", "proto-tcp"), ("no",))[0] == "yes" else "udp"
    found, offset = [], 0
    for part in value.replace(",", " ").split():
        offset = value.index(part, offset)
        at, offset = column + offset, offset + len(part)
        host, port, proto = _remote(part)
        if proto is not None and proto not in OPENVPN_PROTOS:
            raise ConfigError(Pos(path, line_no, at), f"expected a protocol ({', '.join(OPENVPN_PROTOS)}) "
                                                      f"in {part!r}")
        if port is not None and not port.isdigit():
            raise ConfigError(Pos(path, line_no, at), f"expected HOST[:PORT[:PROTO]], got {part!r}")
        found.append(endpoint(line_no, at, host, port or default_port,
                              OPENVPN_PROTOS[proto] if proto else default_proto))
    return found


def _remote(part: str):
    """HOST[:PORT[:PROTO]] as NetworkManager's OpenVPN plugin reads it: an IPv6 address,
    bare or in brackets, is a host whole; an empty port or protocol means the default."""
    if _is_ipv6(part):
        return part.strip("[]"), None, None
    host, _, port = part.rpartition(":")
    if not host:
        return part, None, None
    proto = None
    if not _is_ipv6(host) and ":" in host:
        host, _, first = host.rpartition(":")
        port, proto = first, port
    return host.strip("[]"), port or None, proto or None


def _is_ipv6(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
        return True
    except ValueError:
        return False
