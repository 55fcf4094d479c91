"""ferm's match modules: each keyword's iptables option, and the form iptables-save prints it in.

The loader reads every rule back and compares it line by line, so a value is written here
as the kernel will print it (marks in hex, rates in their largest exact unit, ports as
numbers), the options of a module in the order iptables prints them, with the defaults it
adds. Modules left out, and why, are in LEFT_OUT.
"""

import ipaddress
import re
from collections import namedtuple

from . import values as V
from .errors import ConfigError

# kind: "value" (a list makes one rule per value), "list" (a list is one value, joined),
# "flag" (no value); parse(atoms, ctx) -> (text or None, families it fits or None)
Option = namedtuple("Option", "flag kind parse")

CTSTATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
CTSTATUS = ("NONE", "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED")
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
PKT_TYPES = ("unicast", "broadcast", "multicast")
ADDR_TYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE",
              "PROHIBIT", "THROW", "NAT", "XRESOLVE")
TOS_NAMES = {"minimize-delay": 0x10, "maximize-throughput": 0x08, "maximize-reliability": 0x04,
             "minimize-cost": 0x02, "normal-service": 0x00}
DSCP_CLASSES = {"CS0": 0, "CS1": 8, "CS2": 16, "CS3": 24, "CS4": 32, "CS5": 40, "CS6": 48, "CS7": 56,
                "AF11": 10, "AF12": 12, "AF13": 14, "AF21": 18, "AF22": 20, "AF23": 22, "AF31": 26,
                "AF32": 28, "AF33": 30, "AF41": 34, "AF42": 36, "AF43": 38, "EF": 46, "BE": 0}
RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
              "d": 86400, "day": 86400}
PRINTED_UNITS = (("day", 86400), ("hour", 3600), ("min", 60), ("sec", 1))
LIMIT_SCALE, HASHLIMIT_SCALE = 10000, 1000000
NO_DATESTOP = "2038-01-19T03:14:07"  # what iptables prints when a time match has none


def _one(atoms, what):
    if len(atoms) != 1:
        raise ConfigError(atoms[1].pos, f"{what} takes one value, not a list")
    return atoms[0]


def _pattern(regex, what):
    compiled = re.compile(regex)

    def parse(atoms, ctx):
        atom = _one(atoms, what)
        if not compiled.match(atom.text):
            raise ConfigError(atom.pos, f"expected {what}, got {atom.text!r}")
        return atom.text, None
    return parse


def _number(low, high, what="a number"):
    def parse(atoms, ctx):
        atom = _one(atoms, what)
        try:
            value = int(atom.text, 0)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ConfigError(atom.pos, f"expected {what} from {low} to {high}, got {atom.text!r}")
        return str(value), None
    return parse


def _range(low, high, what):
    """N or N:M (either end may be left out, as iptables allows)."""
    def parse(atoms, ctx):
        atom = _one(atoms, what)
        parts = atom.text.split(":")
        try:
            numbers = [int(p, 0) if p else None for p in parts]
        except ValueError:
            numbers = [-1]
        if len(parts) > 2 or any(n is not None and not low <= n <= high for n in numbers) or parts == [""]:
            raise ConfigError(atom.pos, f"expected {what} (N or N:M, {low} to {high}), got {atom.text!r}")
        if len(numbers) == 1:
            return str(numbers[0]), None
        first, last = numbers[0] if numbers[0] is not None else low, numbers[1] if numbers[1] is not None else high
        return f"{first}:{last}", None
    return parse


def _choice(choices, what, case=str.upper):
    def parse(atoms, ctx):
        atom = _one(atoms, what)
        text = case(atom.text)
        if text not in choices:
            raise ConfigError(atom.pos, f"expected {what} ({', '.join(choices)}), got {atom.text!r}")
        return text, None
    return parse


def _joined(choices, what, case=str.upper, order=True):
    """A list (ferm's) or a comma-joined word (iptables'), printed in iptables' order."""
    def parse(atoms, ctx):
        seen = []
        for atom in atoms:
            for part in atom.text.split(","):
                text = case(part) if case else part
                if text not in choices:
                    raise ConfigError(atom.pos, f"expected {what} ({', '.join(choices)}), got {part!r}")
                if text not in seen:
                    seen.append(text)
        if not seen:
            raise ConfigError(ctx.pos, f"{what}: the list is empty")
        return ",".join(c for c in choices if c in seen) if order else ",".join(seen), None
    return parse


def _mark(atoms, ctx):
    """VALUE or VALUE/MASK, printed in hex; a full mask is left out."""
    atom = _one(atoms, "a mark")
    try:
        parts = [int(p, 0) for p in atom.text.split("/")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 2 or any(not 0 <= p <= 0xFFFFFFFF for p in parts):
        raise ConfigError(atom.pos, f"expected a mark (VALUE or VALUE/MASK, 32 bits), got {atom.text!r}")
    if len(parts) == 1 or parts[1] == 0xFFFFFFFF:
        return f"0x{parts[0]:x}", None
    return f"0x{parts[0]:x}/0x{parts[1]:x}", None


def canonical_rate(atom, scale: int) -> str:
    """A rate as iptables prints it back: the largest unit that still gives a whole number,
    worked out from the period the kernel keeps (scale * seconds per unit / count)."""
    m = re.match(r"^(\d+)(?:/([a-z]+))?$", atom.text)
    unit = RATE_UNITS.get(m.group(2) or "sec") if m else None
    count = int(m.group(1)) if m else 0
    if unit is None or count == 0 or count // unit > scale:
        raise ConfigError(atom.pos, f"expected a rate such as 5/minute or 10/second, got {atom.text!r}")
    period = scale * unit // count
    chosen = PRINTED_UNITS[0]
    for name, seconds in PRINTED_UNITS[1:]:
        mult = scale * seconds
        if period > mult or mult // period < mult % period:
            break
        chosen = (name, seconds)
    return f"{scale * chosen[1] // period}/{chosen[0]}"


def _rate(scale):
    return lambda atoms, ctx: (canonical_rate(_one(atoms, "a rate"), scale), None)


def _mac(atoms, ctx):
    atom = _one(atoms, "a MAC address")
    if not re.match(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$", atom.text):
        raise ConfigError(atom.pos, f"expected a MAC address such as 00:11:22:33:44:55, got {atom.text!r}")
    return atom.text.lower(), None


def _ip_range(atoms, ctx):
    atom = _one(atoms, "an address range")
    try:
        first, last = (ipaddress.ip_address(p) for p in atom.text.split("-"))
    except ValueError:
        raise ConfigError(atom.pos, f"expected an address range such as 192.0.2.1-192.0.2.9, got {atom.text!r}") from None
    if first.version != last.version:
        raise ConfigError(atom.pos, "the two ends of an address range are of different families")
    return f"{first}-{last}", frozenset((V.IP if first.version == 4 else V.IP6,))


def _address(atoms, ctx):
    family, net = V.address(_one(atoms, "an address"))
    return net.rsplit("/", 1)[0] if net.endswith(("/32", "/128")) else net, frozenset((family,))


def _ports(atoms, ctx):
    """multiport's list: up to 15 ports, a range counting as two."""
    if ctx.proto not in V.PORT_PROTOCOLS:
        raise ConfigError(ctx.pos, "multiport needs 'proto tcp', 'proto udp', 'proto sctp' or 'proto udplite' before it")
    out, used = [], 0
    for atom in atoms:
        for part in atom.text.split(","):
            value = V.port(atom._replace(text=part), ctx.proto, ctx.services)
            out.append(value)
            used += 2 if ":" in value else 1
    if used > 15:
        raise ConfigError(atoms[0].pos, f"multiport takes at most 15 ports (a range counts as two), not {used}")
    return ",".join(out), None


def _ctproto(atoms, ctx):
    atom = _one(atoms, "a protocol")
    proto = V.protocol(atom)
    return str(PROTOCOL_NUMBERS.get(proto, proto)), None


PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58, "sctp": 132,
                    "udplite": 136}


def _time_of_day(atoms, ctx):
    atom = _one(atoms, "a time of day")
    m = re.match(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$", atom.text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59 or int(m.group(3) or 0) > 59:
        raise ConfigError(atom.pos, f"expected a time of day such as 08:30 or 22:00:05, got {atom.text!r}")
    return f"{int(m.group(1)):02d}:{m.group(2)}:{m.group(3) or '00'}", None


def _date(atoms, ctx):
    """ferm's 2005:01:01[:23:59:59] or iptables' 2005-01-01[T23:59:59]."""
    atom = _one(atoms, "a date")
    m = re.match(r"^(\d{4})[-:](\d{2})[-:](\d{2})(?:[T:](\d{2}):(\d{2})(?::(\d{2}))?)?$", atom.text)
    if not m:
        raise ConfigError(atom.pos, f"expected a date such as 2026-12-31 or 2026-12-31T23:59:59, got {atom.text!r}")
    y, mo, d, h, mi, s = (m.group(k) for k in range(1, 7))
    return f"{y}-{mo}-{d}T{h or '00'}:{mi or '00'}:{s or '00'}", None


def _monthdays(atoms, ctx):
    days = sorted({int(p) for a in atoms for p in a.text.split(",") if p.isdigit() and 1 <= int(p) <= 31})
    if len(days) != sum(len(a.text.split(",")) for a in atoms):
        raise ConfigError(atoms[0].pos, "expected days of the month (1 to 31)")
    return ",".join(str(d) for d in days), None


def _tos(atoms, ctx):
    atom = _one(atoms, "a TOS value")
    text = atom.text.lower()
    if text in TOS_NAMES:
        return f"0x{TOS_NAMES[text]:02x}/0x3f", None
    try:
        parts = [int(p, 0) for p in text.split("/")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 2 or any(not 0 <= p <= 0xFF for p in parts):
        raise ConfigError(atom.pos, f"expected a TOS value (a name such as Minimize-Delay, or 0xNN[/0xMM]), got {atom.text!r}")
    return f"0x{parts[0]:02x}/0x{(parts[1] if len(parts) == 2 else 0xFF):02x}", None


def _dscp(atoms, ctx):
    atom = _one(atoms, "a DSCP value")
    value = DSCP_CLASSES.get(atom.text.upper())
    if value is None:
        try:
            value = int(atom.text, 0)
        except ValueError:
            value = -1
    if not 0 <= value <= 63:
        raise ConfigError(atom.pos, f"expected a DSCP value (0 to 63) or class (AF41, EF, CS1...), got {atom.text!r}")
    return f"0x{value:02x}", None


def _text(what, max_len=255):
    return lambda atoms, ctx: (V.safe_text(_one(atoms, what), what, max_len), None)


def _name(what, max_len=200):
    return _pattern(r"^[A-Za-z0-9_.:-]{1,%d}$" % max_len, what)


def _spi(atoms, ctx):
    atom = _one(atoms, "an SPI")
    parts = atom.text.split(":")
    try:
        numbers = [int(p, 0) for p in parts]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 2 or any(not 0 <= n <= 0xFFFFFFFF for n in numbers):
        raise ConfigError(atom.pos, f"expected an SPI (N or N:M), got {atom.text!r}")
    return ":".join(str(n) for n in numbers), None


def _addr_types(atoms, ctx):
    """Address types; BROADCAST is IPv4's only (ip6tables refuses it)."""
    text, _ = _joined(ADDR_TYPES, "an address type")(atoms, ctx)
    return text, frozenset((V.IP,)) if "BROADCAST" in text.split(",") else None


def _flag(atoms, ctx):
    return None, None


def _o(flag, kind, parse):
    return Option(flag, kind, parse)


# module -> {ferm keyword: Option}
MODULES = {
    "state": {"state": _o("--state", "list", _joined(CTSTATES[:5], "a state"))},
    "conntrack": {
        "ctstate": _o("--ctstate", "list", _joined(CTSTATES, "a ctstate")),
        "ctproto": _o("--ctproto", "value", _ctproto),
        "ctstatus": _o("--ctstatus", "list", _joined(CTSTATUS, "a ctstatus")),
    },
    "multiport": {
        "source-ports": _o("--sports", "list", _ports), "sports": _o("--sports", "list", _ports),
        "destination-ports": _o("--dports", "list", _ports), "dports": _o("--dports", "list", _ports),
        "ports": _o("--ports", "list", _ports),
    },
    "limit": {"limit": _o("--limit", "value", _rate(LIMIT_SCALE)),
              "limit-burst": _o("--limit-burst", "value", _number(1, 10000, "a burst"))},
    "hashlimit": {
        "hashlimit": _o("--hashlimit-upto", "value", _rate(HASHLIMIT_SCALE)),
        "hashlimit-upto": _o("--hashlimit-upto", "value", _rate(HASHLIMIT_SCALE)),
        "hashlimit-above": _o("--hashlimit-above", "value", _rate(HASHLIMIT_SCALE)),
        "hashlimit-burst": _o("--hashlimit-burst", "value", _number(1, 10000, "a burst")),
        "hashlimit-mode": _o("--hashlimit-mode", "list",
                             _joined(("srcip", "srcport", "dstip", "dstport"), "a hashlimit-mode", str.lower)),
        "hashlimit-name": _o("--hashlimit-name", "value", _name("a hashlimit-name", 15)),
        "hashlimit-srcmask": _o("--hashlimit-srcmask", "value", _number(0, 128, "a prefix length")),
        "hashlimit-dstmask": _o("--hashlimit-dstmask", "value", _number(0, 128, "a prefix length")),
    },
    "recent": {
        "set": _o("--set", "flag", _flag), "rcheck": _o("--rcheck", "flag", _flag),
        "update": _o("--update", "flag", _flag), "remove": _o("--remove", "flag", _flag),
        "seconds": _o("--seconds", "value", _number(1, 0xFFFFFFFF, "seconds")),
        "reap": _o("--reap", "flag", _flag),
        "hitcount": _o("--hitcount", "value", _number(1, 0xFFFFFFFF, "a hitcount")),
        "rttl": _o("--rttl", "flag", _flag),
        "name": _o("--name", "value", _name("a name", 199)),
        "mask": _o("--mask", "value", _address),
        "rsource": _o("--rsource", "flag", _flag), "rdest": _o("--rdest", "flag", _flag),
    },
    "mac": {"mac-source": _o("--mac-source", "value", _mac)},
    "iprange": {"src-range": _o("--src-range", "value", _ip_range),
                "dst-range": _o("--dst-range", "value", _ip_range)},
    "mark": {"mark": _o("--mark", "value", _mark)},
    "connmark": {"mark": _o("--mark", "value", _mark)},
    "length": {"length": _o("--length", "value", _range(0, 65535, "a length"))},
    "pkttype": {"pkt-type": _o("--pkt-type", "value", _choice(PKT_TYPES, "a packet type", str.lower))},
    "ttl": {"ttl-eq": _o("--ttl-eq", "value", _number(0, 255, "a TTL")),
            "ttl-gt": _o("--ttl-gt", "value", _number(0, 255, "a TTL")),
            "ttl-lt": _o("--ttl-lt", "value", _number(0, 255, "a TTL"))},
    "hl": {"hl-eq": _o("--hl-eq", "value", _number(0, 255, "a hop limit")),
           "hl-gt": _o("--hl-gt", "value", _number(0, 255, "a hop limit")),
           "hl-lt": _o("--hl-lt", "value", _number(0, 255, "a hop limit"))},
    "addrtype": {"src-type": _o("--src-type", "value", _addr_types), "dst-type": _o("--dst-type", "value", _addr_types),
                 "limit-iface-in": _o("--limit-iface-in", "flag", _flag),
                 "limit-iface-out": _o("--limit-iface-out", "flag", _flag)},
    "connlimit": {"connlimit-above": _o("--connlimit-above", "value", _number(0, 0xFFFFFFFF, "a count")),
                  "connlimit-upto": _o("--connlimit-upto", "value", _number(0, 0xFFFFFFFF, "a count")),
                  "connlimit-mask": _o("--connlimit-mask", "value", _number(0, 128, "a prefix length")),
                  "connlimit-saddr": _o("--connlimit-saddr", "flag", _flag),
                  "connlimit-daddr": _o("--connlimit-daddr", "flag", _flag)},
    "tcpmss": {"mss": _o("--mss", "value", _range(0, 65535, "an MSS"))},
    "policy": {"dir": _o("--dir", "value", _choice(("in", "out"), "a direction", str.lower)),
               "pol": _o("--pol", "value", _choice(("none", "ipsec"), "a policy", str.lower)),
               "strict": _o("--strict", "flag", _flag),
               "reqid": _o("--reqid", "value", _number(0, 0xFFFFFFFF, "a reqid")),
               "spi": _o("--spi", "value", _pattern(r"^(0x[0-9a-fA-F]+|[0-9]+)$", "an SPI")),
               "proto": _o("--proto", "value", _choice(("ah", "esp", "ipcomp"), "a protocol", str.lower)),
               "mode": _o("--mode", "value", _choice(("tunnel", "transport"), "a mode", str.lower)),
               "tunnel-src": _o("--tunnel-src", "value", _address),
               "tunnel-dst": _o("--tunnel-dst", "value", _address)},
    "esp": {"espspi": _o("--espspi", "value", _spi)},
    "ah": {"ahspi": _o("--ahspi", "value", _spi)},
    "time": {"timestart": _o("--timestart", "value", _time_of_day),
             "timestop": _o("--timestop", "value", _time_of_day),
             "monthdays": _o("--monthdays", "list", _monthdays),
             "weekdays": _o("--weekdays", "list", _joined(WEEKDAYS, "a weekday", str.title)),
             "days": _o("--weekdays", "list", _joined(WEEKDAYS, "a weekday", str.title)),
             "datestart": _o("--datestart", "value", _date),
             "datestop": _o("--datestop", "value", _date),
             "kerneltz": _o("--kerneltz", "flag", _flag),
             "contiguous": _o("--contiguous", "flag", _flag)},
    "string": {"string": _o("--string", "value", _text("a string", 128)),
               "algo": _o("--algo", "value", _choice(("bm", "kmp"), "an algorithm", str.lower)),
               "from": _o("--from", "value", _number(0, 65535, "an offset")),
               "to": _o("--to", "value", _number(0, 65535, "an offset"))},
    "tos": {"tos": _o("--tos", "value", _tos)},
    "dscp": {"dscp": _o("--dscp", "value", _dscp), "dscp-class": _o("--dscp", "value", _dscp)},
    "physdev": {"physdev-in": _o("--physdev-in", "value", lambda a, c: (V.interface(_one(a, "an interface")), None)),
                "physdev-out": _o("--physdev-out", "value",
                                  lambda a, c: (V.interface(_one(a, "an interface")), None)),
                "physdev-is-in": _o("--physdev-is-in", "flag", _flag),
                "physdev-is-out": _o("--physdev-is-out", "flag", _flag),
                "physdev-is-bridged": _o("--physdev-is-bridged", "flag", _flag)},
    "owner": {"uid-owner": _o("--uid-owner", "value", lambda a, c: (V.account(_one(a, "a user"), "user"), None)),
              "gid-owner": _o("--gid-owner", "value", lambda a, c: (V.account(_one(a, "a group"), "group"), None)),
              "suppl-groups": _o("--suppl-groups", "flag", _flag),
              "socket-exists": _o("--socket-exists", "flag", _flag)},
    "helper": {"helper": _o("--helper", "value", _name("a helper", 29))},
    "cgroup": {"path": _o("--path", "value", _pattern(r"^[A-Za-z0-9_./@:-]{1,4095}$", "a cgroup path"))},
    "quota": {"quota": _o("--quota", "value", _number(0, 2 ** 64 - 1, "a byte count"))},
    "comment": {"comment": _o("--comment", "value", _text("a comment", 255))},
    "rpfilter": {"loose": _o("--loose", "flag", _flag), "validmark": _o("--validmark", "flag", _flag),
                 "accept-local": _o("--accept-local", "flag", _flag), "invert": _o("--invert", "flag", _flag)},
}

# The order iptables prints a module's options in (the others stay as written).
ORDER = {
    "tcp": ("--sport", "--dport", "--tcp-option", "--tcp-flags"),
    "recent": ("--set", "--rcheck", "--update", "--remove", "--seconds", "--reap", "--hitcount", "--rttl",
               "--name", "--mask", "--rsource", "--rdest"),
    "hashlimit": ("--hashlimit-upto", "--hashlimit-above", "--hashlimit-burst", "--hashlimit-mode",
                  "--hashlimit-name", "--hashlimit-srcmask", "--hashlimit-dstmask"),
    "connlimit": ("--connlimit-upto", "--connlimit-above", "--connlimit-mask", "--connlimit-saddr",
                  "--connlimit-daddr"),
    "time": ("--timestart", "--timestop", "--monthdays", "--weekdays", "--datestart", "--datestop",
             "--kerneltz", "--contiguous"),
    "string": ("--string", "--algo", "--from", "--to"),
    "policy": ("--dir", "--pol", "--strict", "--reqid", "--spi", "--proto", "--mode", "--tunnel-src", "--tunnel-dst"),
    "limit": ("--limit", "--limit-burst"),
    "conntrack": ("--ctstate", "--ctproto", "--ctstatus"),
    "addrtype": ("--src-type", "--dst-type", "--limit-iface-in", "--limit-iface-out"),
    "rpfilter": ("--loose", "--validmark", "--accept-local", "--invert"),
}
# What a module needs before it loads, checked when the rule is complete.
REQUIRED = {
    "recent": ((("--set", "--rcheck", "--update", "--remove"), "one of set, rcheck, update, remove"),),
    "hashlimit": ((("--hashlimit-upto", "--hashlimit-above"), "hashlimit (or hashlimit-upto, hashlimit-above)"),
                  (("--hashlimit-name",), "hashlimit-name")),
    "connlimit": ((("--connlimit-upto", "--connlimit-above"), "connlimit-above or connlimit-upto"),),
    "policy": ((("--dir",), "dir in or dir out"), (("--pol",), "pol ipsec or pol none")),
    "string": ((("--string",), "string"), (("--algo",), "algo bm or algo kmp")),
}
# Modules of iptables-extensions left out, and why (the man page says the same).
LEFT_OUT = {
    "set": "ipset sets are made by another program and may not exist at boot, when a rule naming one "
           "cannot load: the kill switch would fail closed",
    "u32": "iptables prints its tests rewritten, so the loader could not verify the rule it loaded",
    "statistic": "iptables prints a random probability rounded, so the loader could not verify the rule",
    "bpf": "its bytecode is not checked here; use the other matches",
    "socket": "it needs the socket lookup in PREROUTING only, for transparent proxies, not a host firewall",
    "nth": "it is gone from the kernel (statistic took its place, and is left out too)",
    "random": "it is gone from the kernel (statistic took its place, and is left out too)",
    "osf": "it matches only with fingerprints another program loads (nfnl_osf): not there at boot",
    "ipvs": "it is for IPVS load balancers, not a host's kill switch",
    "realm": "it matches routing realms, which a host's routes do not set",
    "cpu": "it matches the CPU that handles a packet: for spreading load, not for deciding what leaves",
    "dccp": "its options are not checked here; 'proto dccp' with addresses and interfaces works",
    "sctp": "its chunk and port options are not checked here; 'proto sctp' with addresses and interfaces works",
    "eui64": "it compares a source address with a MAC, in INPUT only: not a kill switch's question",
}
for _name in ("account", "condition", "fuzzy", "geoip", "ipv4options", "psd"):
    LEFT_OUT[_name] = ("it comes from xtables-addons, which Debian's kernel does not have: a rule naming it "
                       "could not load at boot, and the kill switch would fail closed")
for _name in ("dst", "hbh", "rt", "frag", "ipv6header", "mh"):
    LEFT_OUT[_name] = ("IPv6 extension headers are not matched here: a kill switch decides by addresses, "
                       "interfaces and ports, for IPv6 as for IPv4")


def finish(module: str, options: tuple, family: str, pos) -> tuple:
    """A module's options as iptables prints them: in its order, with its defaults."""
    for flags, what in REQUIRED.get(module, ()):
        if not any(o[1] in flags for o in options):
            raise ConfigError(pos, f"'mod {module}' needs {what}")
    opts = list(options)
    present = {o[1] for o in opts}
    if module == "recent":
        if "--name" not in present:
            opts.append((False, "--name", "DEFAULT"))
        if "--mask" not in present:
            opts.append((False, "--mask", "255.255.255.255" if family == V.IP else
                         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        if "--rdest" not in present and "--rsource" not in present:
            opts.append((False, "--rsource", None))
    elif module == "hashlimit" and "--hashlimit-burst" not in present:
        opts.append((False, "--hashlimit-burst", "5"))
    elif module == "connlimit":
        if "--connlimit-mask" not in present:
            opts.append((False, "--connlimit-mask", "32" if family == V.IP else "128"))
        if "--connlimit-daddr" not in present and "--connlimit-saddr" not in present:
            opts.append((False, "--connlimit-saddr", None))
    elif module == "time" and "--datestop" not in present:
        opts.append((False, "--datestop", NO_DATESTOP))
    elif module == "limit":
        opts = [o for o in opts if o[1:] != ("--limit-burst", "5")]  # the default is not printed
    order = ORDER.get(module)
    if order:
        opts.sort(key=lambda o: order.index(o[1]) if o[1] in order else len(order))
    return tuple(opts)
