"""ferm's targets with options (ACCEPT, DROP, RETURN and NOP have none): where each may stand,
its options, and the form iptables-save prints them in (the loader verifies what it loaded).
"""

import re
from collections import namedtuple

from . import values as V
from .errors import ConfigError
from .matches import _dscp, _tos

# tables: where the target may stand (None: any); chains: the built-in chains it may be in
# (user chains are checked by the kernel when they are loaded); options: ferm keyword ->
# (flag, parse or None for a flag); finish(options dict, pos) -> target_options, or
# family -> target_options where they differ by family
Target = namedtuple("Target", "tables chains options finish")

ALL_BITS = 0xFFFFFFFF
OUR_PACKET_BIT, OUR_CONN_BIT = 0x10000000, 0x20000000


def _int(atom, bits=32, what="a number"):
    try:
        value = int(atom.text, 0)
    except ValueError:
        value = -1
    if not 0 <= value < 1 << bits:
        raise ConfigError(atom.pos, f"expected {what}, got {atom.text!r}")
    return value


def _mark_pair(atom):
    parts = atom.text.split("/")
    if len(parts) > 2:
        raise ConfigError(atom.pos, f"expected VALUE or VALUE/MASK, got {atom.text!r}")
    value = _int(atom._replace(text=parts[0]), what="a mark")
    mask = _int(atom._replace(text=parts[1]), what="a mask") if len(parts) == 2 else None
    return value, mask


def _xmark(opts, pos, verbs):
    """MARK's and CONNMARK's ways of setting bits, all printed as --set-xmark VALUE/MASK."""
    given = [k for k in verbs if k in opts]
    if len(given) != 1:
        raise ConfigError(pos, f"expected one of {', '.join(verbs)}")
    verb = given[0]
    value, mask = _mark_pair(opts[verb])
    if verb == "set-xmark":
        value, mask = value, ALL_BITS if mask is None else mask
    elif verb == "set-mark":
        value, mask = value, (ALL_BITS if mask is None else mask) | value
    elif verb == "and-mark":
        value, mask = 0, ~value & ALL_BITS
    elif verb == "or-mark":
        value, mask = value, value
    else:  # xor-mark
        value, mask = value, 0
    return value, mask


def _mark(opts, pos):
    value, mask = _xmark(opts, pos, ("set-mark", "set-xmark", "and-mark", "or-mark", "xor-mark"))
    return (("--set-xmark", f"0x{value:x}/0x{mask:x}"),)


def _connmark(opts, pos):
    for verb in ("save-mark", "restore-mark"):
        if verb in opts:
            mask = _int(opts["mask"], what="a mask") if "mask" in opts else None
            nf = _int(opts["nfmask"], what="a mask") if "nfmask" in opts else (mask if mask is not None else ALL_BITS)
            ct = _int(opts["ctmask"], what="a mask") if "ctmask" in opts else (mask if mask is not None else ALL_BITS)
            return ((f"--{verb}", None), ("--nfmask", f"0x{nf:x}"), ("--ctmask", f"0x{ct:x}"))
    value, mask = _xmark(opts, pos, ("set-mark", "set-xmark", "and-mark", "or-mark", "xor-mark"))
    return (("--set-xmark", f"0x{value:x}/0x{mask:x}"),)


def weakening_bits(target: str, target_options) -> int:
    """The bits of ours a MARK or CONNMARK target would undo: a packet mark it sets to
    the fence's 'judged' bit (the fence would take the packet for judged), a connection mark
    it clears (the connection would no longer count as the tunnel's). Clearing the packet
    bit or setting the connection bit weakens nothing."""
    options = dict(target_options)
    if "--set-xmark" in options:
        value, mask = (int(x, 16) for x in options["--set-xmark"].split("/"))
        if target == "MARK":
            return value & OUR_PACKET_BIT  # xmark: bits in value are set (or flipped)
        return mask & ~value & OUR_CONN_BIT
    if target == "CONNMARK" and "--save-mark" in options:
        return int(options["--ctmask"], 16) & OUR_CONN_BIT  # the packet's bit, never set, is copied over
    return 0


_NAT_ADDRESS = re.compile(r"^(?:(?P<v4>[0-9.]+(?:-[0-9.]+)?)|\[(?P<v6>[0-9A-Fa-f:.]+(?:-[0-9A-Fa-f:.]+)?)\]"
                          r"|(?P<bare6>[0-9A-Fa-f:]*:[0-9A-Fa-f:]*(?:-[0-9A-Fa-f:]+)?))"
                          r"(?::(?P<ports>\d{1,5}(?:-\d{1,5})?))?$")


def nat_address_family(atom):
    """The family of a DNAT/SNAT 'to' value: ADDR[-ADDR][:PORT[-PORT]], IPv6 in brackets."""
    m = _NAT_ADDRESS.match(atom.text)
    if not m:
        raise ConfigError(atom.pos, f"expected ADDRESS[-ADDRESS][:PORT[-PORT]] (IPv6 in brackets), got {atom.text!r}")
    import ipaddress

    text = m.group("v4") or m.group("v6") or m.group("bare6")
    try:
        versions = {ipaddress.ip_address(p).version for p in text.split("-")}
    except ValueError:
        raise ConfigError(atom.pos, f"not an address: {text!r}") from None
    if len(versions) != 1:
        raise ConfigError(atom.pos, "the two ends of an address range are of different families")
    return V.IP if versions == {4} else V.IP6


def _to(flag, required=True):
    def finish(opts, pos):
        out = []
        if "to" in opts:
            out.append((flag, opts["to"].text))
        elif required:
            raise ConfigError(pos, "expected 'to' and an address")
        out += [(f"--{k}", None) for k in ("random", "persistent") if k in opts]
        return tuple(out)
    return finish


def _ports_to(opts, pos):
    out = []
    if "to-ports" in opts:
        atom = opts["to-ports"]
        if not re.match(r"^\d{1,5}(-\d{1,5})?$", atom.text):
            raise ConfigError(atom.pos, f"expected a port or PORT-PORT, got {atom.text!r}")
        out.append(("--to-ports", atom.text))
    if "random" in opts:
        out.append(("--random", None))
    return tuple(out)


def _one_of(choices):
    def finish(opts, pos):
        given = [k for k in choices if k in opts]
        if len(given) != 1:
            raise ConfigError(pos, f"expected one of {', '.join(choices)}")
        key = given[0]
        if choices[key] is None:
            return ((f"--{key}", None),)
        return ((f"--{key}", choices[key](opts[key])),)
    return finish


def _byte(atom):
    return str(_int(atom, 8, "a number from 0 to 255"))


def _tcpmss(opts, pos):
    if ("set-mss" in opts) == ("clamp-mss-to-pmtu" in opts):
        raise ConfigError(pos, "expected one of set-mss, clamp-mss-to-pmtu")
    if "set-mss" in opts:
        return (("--set-mss", str(_int(opts["set-mss"], 16, "an MSS"))),)
    return (("--clamp-mss-to-pmtu", None),)


def _classify(opts, pos):
    atom = opts.get("set-class")
    m = re.match(r"^([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})$", atom.text) if atom else None
    if not m:
        raise ConfigError(atom.pos if atom else pos, "expected set-class MAJOR:MINOR (hex, as tc writes it)")
    return (("--set-class", f"{int(m.group(1), 16):04x}:{int(m.group(2), 16):04x}"),)


def _nflog(opts, pos):
    out = []
    if "nflog-prefix" in opts:
        out.append(("--nflog-prefix", V.safe_text(opts["nflog-prefix"], "an nflog-prefix", 63)))
    if "nflog-group" in opts and _int(opts["nflog-group"], 16, "a group") != 0:
        out.append(("--nflog-group", str(_int(opts["nflog-group"], 16))))
    if "nflog-threshold" in opts:
        out.append(("--nflog-threshold", str(_int(opts["nflog-threshold"], 16, "a threshold"))))
    return tuple(out)


def _ct(opts, pos):
    if "notrack" in opts:
        return (("--notrack", None),)
    if "zone" in opts:
        return (("--zone", str(_int(opts["zone"], 16, "a zone"))),)
    raise ConfigError(pos, "expected notrack or zone N")


def _nothing(opts, pos):
    return ()


def _set_tos(opts, pos):
    atom = opts.get("set-tos")
    if atom is None:
        raise ConfigError(pos, "expected set-tos")
    return (("--set-tos", _tos([atom], None)[0]),)


def _set_dscp(opts, pos):
    atom = opts.get("set-dscp") or opts.get("set-dscp-class")
    if atom is None:
        raise ConfigError(pos, "expected set-dscp or set-dscp-class")
    return (("--set-dscp", _dscp([atom], None)[0]),)


# REJECT: the kinds of ICMP error each family has
REJECT_TYPES = {
    V.IP: ("icmp-net-unreachable", "icmp-host-unreachable", "icmp-port-unreachable",
           "icmp-proto-unreachable", "icmp-net-prohibited", "icmp-host-prohibited",
           "icmp-admin-prohibited"),
    V.IP6: ("icmp6-no-route", "icmp6-adm-prohibited", "icmp6-addr-unreachable",
            "icmp6-port-unreachable"),
}
DEFAULT_REJECT = {V.IP: "icmp-port-unreachable", V.IP6: "icmp6-port-unreachable"}


def _reject(opts, pos):
    """The compiler has checked reject-with against the rule's families and protocol."""
    if "reject-with" in opts:
        return (("--reject-with", opts["reject-with"].text),)
    return {family: (("--reject-with", DEFAULT_REJECT[family]),) for family in V.FAMILIES}


LOG_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4,
              "warn": 4, "notice": 5, "info": 6, "debug": 7}
LOG_FLAGS = ("log-tcp-sequence", "log-tcp-options", "log-ip-options", "log-uid")


def _log_level(atom) -> int:
    text = atom.text.lower()
    if text in LOG_LEVELS:
        return LOG_LEVELS[text]
    if text.isdigit() and int(text) <= 7:
        return int(text)
    raise ConfigError(atom.pos, f"expected a log-level (0-7 or a name such as warning, info), got {atom.text!r}")


def _log(opts, pos):
    out = []
    if "log-prefix" in opts:
        out.append(("--log-prefix", V.safe_text(opts["log-prefix"], "a log-prefix", 29)))
    if "log-level" in opts:
        level = _log_level(opts["log-level"])
        if level != 4:  # iptables-save leaves out the default
            out.append(("--log-level", str(level)))
    return tuple(out + [(f"--{flag}", None) for flag in LOG_FLAGS if flag in opts])


MANGLE = ("mangle",)
FLAG = None
VALUE = "value"
TARGETS = {
    "REJECT": Target(("filter",), None, {"reject-with": VALUE}, _reject),
    "LOG": Target(None, None, {"log-prefix": VALUE, "log-level": VALUE, **dict.fromkeys(LOG_FLAGS, FLAG)}, _log),
    "DNAT": Target(("nat",), ("PREROUTING", "OUTPUT"), {"to": VALUE, "random": FLAG, "persistent": FLAG},
                   _to("--to-destination")),
    "SNAT": Target(("nat",), ("POSTROUTING", "INPUT"), {"to": VALUE, "random": FLAG, "persistent": FLAG},
                   _to("--to-source")),
    "MASQUERADE": Target(("nat",), ("POSTROUTING",), {"to-ports": VALUE, "random": FLAG}, _ports_to),
    "REDIRECT": Target(("nat",), ("PREROUTING", "OUTPUT"), {"to-ports": VALUE, "random": FLAG}, _ports_to),
    "NETMAP": Target(("nat",), None, {"to": VALUE}, _to("--to")),
    "MARK": Target(None, None, dict.fromkeys(("set-mark", "set-xmark", "and-mark", "or-mark", "xor-mark"), VALUE),
                   _mark),
    "CONNMARK": Target(None, None, {**dict.fromkeys(("set-mark", "set-xmark", "and-mark", "or-mark", "xor-mark",
                                                     "mask", "nfmask", "ctmask"), VALUE),
                                    "save-mark": FLAG, "restore-mark": FLAG}, _connmark),
    "TTL": Target(MANGLE, None, dict.fromkeys(("ttl-set", "ttl-dec", "ttl-inc"), VALUE),
                  _one_of({"ttl-set": _byte, "ttl-dec": _byte, "ttl-inc": _byte})),
    "HL": Target(MANGLE, None, dict.fromkeys(("hl-set", "hl-dec", "hl-inc"), VALUE),
                 _one_of({"hl-set": _byte, "hl-dec": _byte, "hl-inc": _byte})),
    "TCPMSS": Target(("mangle", "filter"), None, {"set-mss": VALUE, "clamp-mss-to-pmtu": FLAG}, _tcpmss),
    "TOS": Target(MANGLE, None, {"set-tos": VALUE}, _set_tos),
    "DSCP": Target(MANGLE, None, {"set-dscp": VALUE, "set-dscp-class": VALUE}, _set_dscp),
    "CLASSIFY": Target(MANGLE, ("FORWARD", "OUTPUT", "POSTROUTING"), {"set-class": VALUE}, _classify),
    "NFLOG": Target(None, None, {"nflog-prefix": VALUE, "nflog-group": VALUE, "nflog-threshold": VALUE}, _nflog),
    "NOTRACK": Target(("raw",), None, {}, _nothing),
    "CT": Target(("raw",), None, {"notrack": FLAG, "zone": VALUE}, _ct),
}
# The targets without options (NOP: ferm's rule without a target), and where each may stand.
BASIC = ("ACCEPT", "DROP", "RETURN", "NOP")
BASIC_TABLES = {"ACCEPT": None, "RETURN": None, "NOP": None, "DROP": ("filter", "mangle", "raw")}
