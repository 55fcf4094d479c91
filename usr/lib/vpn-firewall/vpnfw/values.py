"""Typed values of the config language, checked and put in the form iptables-save prints.

Every value that reaches the ruleset passes through one of these functions, so a value
can never carry text of its own into the iptables-restore input (no spaces, quotes,
newlines or option-like words).
"""

import re
from collections import namedtuple

# socket's C module: socket.py builds enums of every constant at import, on the boot path.
import _socket


from .errors import ConfigError

IP, IP6 = "ip", "ip6"
FAMILIES = (IP, IP6)

# Protocols we know the iptables-save spelling of; numbers map to the same names.
PROTOCOLS = {
    "tcp": "tcp", "6": "tcp",
    "udp": "udp", "17": "udp",
    "icmp": "icmp", "1": "icmp",
    "icmpv6": "ipv6-icmp", "ipv6-icmp": "ipv6-icmp", "58": "ipv6-icmp",
    "gre": "gre", "47": "gre",
    "esp": "esp", "50": "esp",
    "ah": "ah", "51": "ah",
    "sctp": "sctp", "132": "sctp",
    "udplite": "udplite", "136": "udplite",
    "all": "all",
}
PORT_PROTOCOLS = ("tcp", "udp", "sctp", "udplite")
PROTOCOL_FAMILY = {"icmp": IP, "ipv6-icmp": IP6}

ICMP_TYPES = {
    "echo-reply": "0", "destination-unreachable": "3", "network-unreachable": "3/0",
    "host-unreachable": "3/1", "protocol-unreachable": "3/2", "port-unreachable": "3/3",
    "fragmentation-needed": "3/4", "source-quench": "4", "redirect": "5",
    "echo-request": "8", "router-advertisement": "9", "router-solicitation": "10",
    "time-exceeded": "11", "ttl-zero-during-transit": "11/0", "parameter-problem": "12",
    "timestamp-request": "13", "timestamp-reply": "14",
}
ICMPV6_TYPES = {
    "destination-unreachable": "1", "no-route": "1/0", "communication-prohibited": "1/1",
    "address-unreachable": "1/3", "port-unreachable": "1/4", "packet-too-big": "2",
    "time-exceeded": "3", "parameter-problem": "4", "echo-request": "128",
    "echo-reply": "129", "router-solicitation": "133", "router-advertisement": "134",
    "neighbour-solicitation": "135", "neighbor-solicitation": "135",
    "neighbour-advertisement": "136", "neighbor-advertisement": "136", "redirect": "137",
}
_ICMP_NUMERIC = re.compile(r"^(\d{1,3})(?:/(\d{1,3}))?$")

# Linux accepts up to 15 bytes; '/', ':' and white space never; '+' only as iptables' wildcard.
_INTERFACE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}\+?$|^\+$")
# Text that iptables-save prints back unchanged: no quotes, backslashes or control characters.
_SAFE_TEXT = re.compile(r"^[A-Za-z0-9 _.,:;/@+=()\[\]-]*$")
_PORT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_NAME = re.compile(r"^[a-z_][a-z0-9_.-]*\$?$")


class Endpoint(namedtuple("Endpoint", "family net port proto host", defaults=(None,))):
    """A VPN server: an address or network, optionally one port and protocol; or a host
    name, which stands for the addresses `vpn-firewall refresh` pinned for it.
    Every field may be None; net is canonical, with its prefix length."""

    __slots__ = ()


# RFC 1123 names; the last label must hold a letter, so that '198.51.100.' is no name.
_HOST = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*$")


def is_host(text: str) -> bool:
    """A DNS host name with at least one dot (not an address)."""
    return bool(_HOST.match(text)) and "." in text and not text.endswith("-") and not text.replace(".", "").isdigit()


def family_of(net: str) -> str:
    return IP6 if ":" in net else IP


def address(atom) -> tuple:
    """An address or network: (family, canonical 'addr/len'), host bits cleared.

    inet_pton/inet_ntop: strict parsing, and the very spelling iptables-save prints."""
    text = atom.text
    addr, slash, length = text.partition("/")
    family, af, bits = (IP6, _socket.AF_INET6, 128) if ":" in addr else (IP, _socket.AF_INET, 32)
    try:
        packed = _socket.inet_pton(af, addr)
    except OSError:
        raise ConfigError(atom.pos, f"expected an address, got {text!r}") from None
    if slash:
        if not length.isdigit() or int(length) > bits:
            raise ConfigError(atom.pos, f"expected an address, got {text!r}: the prefix length must be 0 to {bits}")
        prefix = int(length)
        if prefix < bits:
            value = int.from_bytes(packed, "big") & ~((1 << (bits - prefix)) - 1)
            packed = value.to_bytes(bits // 8, "big")
    else:
        prefix = bits
    return family, f"{_socket.inet_ntop(af, packed)}/{prefix}"


def net_bounds(net: str) -> tuple:
    """A canonical 'addr/len' as (first, last) addresses, numbers that sort in address order."""
    addr, _, length = net.partition("/")
    af, bits = (_socket.AF_INET6, 128) if ":" in addr else (_socket.AF_INET, 32)
    first = int.from_bytes(_socket.inet_pton(af, addr), "big")
    return first, first | ((1 << (bits - int(length))) - 1)


def address_text(family: str, number: int) -> str:
    """The address `number` in the spelling iptables-save prints."""
    af, size = (_socket.AF_INET6, 16) if family == IP6 else (_socket.AF_INET, 4)
    return _socket.inet_ntop(af, number.to_bytes(size, "big"))


# The usual forms, 198.51.100.7:1194/udp and [2001:db8::7]:1194/udp, take a short cut:
# providers list thousands. Anything else, and every error, goes the general way.
_PLAIN_ENDPOINT = re.compile(r"^(?:([0-9.]+)|\[([0-9A-Fa-f:]+)\]):([1-9][0-9]{0,4})/(udp|tcp)$")


def endpoint(atom) -> Endpoint:
    """IP[/LEN][:PORT][/udp|/tcp], with IPv6 in brackets when a port follows: [2001:db8::7]:1194/udp."""
    m = _PLAIN_ENDPOINT.match(atom.text)
    if m and int(m.group(3)) < 65536:
        v4, v6, port, proto = m.groups()
        af, family, bits = (_socket.AF_INET, IP, 32) if v4 else (_socket.AF_INET6, IP6, 128)
        try:
            canonical = _socket.inet_ntop(af, _socket.inet_pton(af, v4 or v6))
            return Endpoint(family, f"{canonical}/{bits}", port, proto)
        except OSError:
            pass  # the general way says what is wrong
    return _endpoint(atom)


def _endpoint(atom) -> Endpoint:
    text = atom.text
    rest, proto = text, None
    low = text.lower()
    for name in ("udp", "tcp"):
        if low.endswith("/" + name):
            rest, proto = text[: -len(name) - 1], name
            break
    port = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ConfigError(atom.pos, f"expected ']' to close the IPv6 address in {text!r}")
        addr_text, tail = rest[1:close], rest[close + 1:]
        if tail:
            if not tail.startswith(":"):
                raise ConfigError(atom.pos, f"expected ':PORT' after ']' in {text!r}")
            port = tail[1:]
    elif rest.count(":") == 1:
        addr_text, port = rest.split(":")
    else:
        addr_text = rest
    if port is not None:
        port = _number_port(atom, port, text)
    if _HOST.match(addr_text) and not addr_text.endswith("-"):
        return Endpoint(None, None, port, proto, addr_text.lower())
    fam, net = address(atom._replace(text=addr_text))
    return Endpoint(fam, net, port, proto)


def _number_port(atom, text: str, whole: str) -> str:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(atom.pos, f"expected a port from 1 to 65535 in {whole!r}, got {text!r}")
    return str(int(text))


def interface(atom) -> str:
    text = atom.text
    if not _INTERFACE.match(text) or text in (".", ".."):
        raise ConfigError(
            atom.pos,
            f"expected an interface name (at most 15 of letters, digits, '_.@-', and '+' "
            f"only at the end as a wildcard), got {text!r}",
        )
    return text


_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(service|scope)$")


def unit(atom) -> str:
    """A systemd unit for $BYPASS_UNITS: a system unit's name (backup.service), or a unit's
    cgroup path under the hierarchy's root (user.slice/.../app.slice/x.service)."""
    text = atom.text
    parts = text.split("/")
    if not _UNIT_NAME.match(parts[-1]) or any(p in ("", ".", "..") for p in parts) or len(text) > 200:
        raise ConfigError(atom.pos, f"expected a systemd unit such as backup.service (a service or scope), or "
                                    f"its cgroup path such as user.slice/user-1000.slice/user@1000.service/"
                                    f"app.slice/sync.service, got {text!r}")
    return text


_UNIT_PATTERN = re.compile(r"^[A-Za-z0-9:_.\\-]+@\*\.service$")


def unit_pattern(atom) -> str:
    """A unit for $VPN_UNITS: as $BYPASS_UNITS takes, or every instance of a template
    (openvpn-client@*.service)."""
    if _UNIT_PATTERN.match(atom.text):
        return atom.text
    try:
        return unit(atom)
    except ConfigError:
        raise ConfigError(atom.pos, f"expected a systemd unit such as openvpn-client@*.service, "
                                    f"NetworkManager.service or a unit's cgroup path, got {atom.text!r}") from None


def protocol(atom) -> str:
    name = PROTOCOLS.get(atom.text.lower())
    if name is None:
        known = ", ".join(sorted({v for v in PROTOCOLS.values()}))
        raise ConfigError(atom.pos, f"expected a protocol ({known}), got {atom.text!r}")
    return name


class Services:
    """Port names from /etc/services, read only when a config uses a name."""

    def __init__(self, path: str):
        self.path = path
        self._ports = None

    def lookup(self, name: str, proto: str) -> int | None:
        if self._ports is None:
            self._ports = _read_services(self.path)
        return self._ports.get((name, proto))


def _read_services(path: str) -> dict:
    from . import inputs

    data = inputs.read_if_there(path)
    ports = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or "/" not in fields[1]:
            continue
        number, proto = fields[1].split("/", 1)
        if not number.isdigit():
            continue
        for name in [fields[0]] + fields[2:]:
            ports.setdefault((name, proto), int(number))
    return ports


def port(atom, proto: str, services: Services) -> str:
    """A port or range 'a:b', by number or by a name from /etc/services."""
    parts = atom.text.split(":")
    if len(parts) > 2:
        raise ConfigError(atom.pos, f"expected a port or a range 'a:b', got {atom.text!r}")
    numbers = []
    for part in parts:
        if part.isdigit():
            n = int(part)
        elif _PORT_NAME.match(part):
            n = services.lookup(part, proto)
            if n is None:
                raise ConfigError(atom.pos, f"unknown service name {part!r} for {proto} (see {services.path})")
        else:
            raise ConfigError(atom.pos, f"expected a port or a range 'a:b', got {atom.text!r}")
        if not 0 <= n <= 65535:
            raise ConfigError(atom.pos, f"port {part!r} is out of range 0-65535")
        numbers.append(n)
    if len(numbers) == 2 and numbers[0] > numbers[1]:
        raise ConfigError(atom.pos, f"port range {atom.text!r} runs backwards")
    return ":".join(str(n) for n in numbers)


def icmp_type(atom, family: str) -> str:
    table = ICMP_TYPES if family == IP else ICMPV6_TYPES
    text = atom.text.lower()
    if text in table:
        return table[text]
    m = _ICMP_NUMERIC.match(text)
    if m and all(g is None or int(g) <= 255 for g in m.groups()):
        return "/".join(g for g in m.groups() if g is not None)
    keyword = "icmp-type" if family == IP else "icmpv6-type"
    raise ConfigError(atom.pos, f"expected an {keyword} name or number such as 'echo-request', got {atom.text!r}")


def safe_text(atom, what: str, max_len: int) -> str:
    text = atom.text
    if len(text) > max_len:
        raise ConfigError(atom.pos, f"{what} is longer than {max_len} characters")
    if not _SAFE_TEXT.match(text):
        raise ConfigError(
            atom.pos,
            f"{what} may hold only letters, digits, spaces and _.,:;/@+=()[]-, got {text!r}",
        )
    return text


def boolean(atom) -> bool:
    text = atom.text.lower()
    if text in ("yes", "1", "true", "on"):
        return True
    if text in ("no", "0", "false", "off"):
        return False
    raise ConfigError(atom.pos, f"expected yes or no, got {atom.text!r}")


def fwmark(atom) -> int:
    """A packet mark a VPN client sets on its own packets (wg-quick: 51820), any bit but ours."""
    try:
        value = int(atom.text, 0)
    except ValueError:
        value = -1
    if not 1 <= value <= 0xFFFFFFFF:
        raise ConfigError(atom.pos, f"expected a mark (a number such as 51820 or 0xca6c), got {atom.text!r}")
    if value & 0x30000000:
        raise ConfigError(atom.pos, f"the mark {atom.text} uses bit 0x10000000 or 0x20000000, which vpn-firewall "
                                    "keeps for itself")
    return value


def account(atom, kind: str) -> str:
    """A user or group, by name or number, as the number iptables-save prints."""
    text = atom.text
    if text.isdigit():
        return str(int(text))
    if not _NAME.match(text):
        raise ConfigError(atom.pos, f"expected a {kind} name or number, got {text!r}")
    from . import inputs

    try:
        return inputs.account(kind, text)
    except KeyError:
        raise ConfigError(atom.pos, f"no such {kind} {text!r} on this system") from None


