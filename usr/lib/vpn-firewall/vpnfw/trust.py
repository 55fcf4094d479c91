"""$TRUSTED_LANS: the LAN allowed only on networks this machine recognises, by something an
attacker on another network cannot copy cheaply: the interface, and the MAC address of the
default gateway on it (IFACE/MAC). Untrusted networks get DHCP and neighbour discovery on
the link only ($ALLOW_DHCP); trust grants LAN reach only, never a way around the tunnel.

Judged when the rules are compiled (start, reload: the kernel's own tables, /proc/net/route
and /proc/net/arp), and taken back by the guard as soon as the network changes under it (a
link, a route or a neighbour on a trusted interface: rtnetlink): it loads the rules in force
without that interface's LAN allowance (closing needs no compile). The allowance comes back
with the next reload that finds the network trusted again (NetworkManager's dispatcher or
an ifupdown hook can run 'systemctl reload vpn-firewall' when a link comes up).
"""

from . import inputs, values as V

COMMENT = "vpn-firewall trusted-lan"


def entry(atom):
    """IFACE or IFACE/MAC -> (interface, mac or None)."""
    from .errors import ConfigError

    iface, _, mac = atom.text.partition("/")
    V.interface(atom._replace(text=iface))  # its own error for a bad name
    if "+" in iface or (mac and not _is_mac(mac)):
        raise ConfigError(atom.pos, f"expected an interface, or an interface and its gateway's MAC address "
                                    f"(wlan0/aa:bb:cc:dd:ee:ff), got {atom.text!r}")
    return iface, mac.lower() or None


def _is_mac(text) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts)


def gateways(route_text: str) -> dict:
    """/proc/net/route -> {interface: [default gateway addresses]}."""
    found = {}
    for line in route_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000" and fields[2] != "00000000":
            gw = bytes.fromhex(fields[2])[::-1]  # little-endian
            found.setdefault(fields[0], []).append(".".join(str(b) for b in gw))
    return found


def neighbours(arp_text: str) -> dict:
    """/proc/net/arp -> {(interface, address): mac} of complete entries."""
    found = {}
    for line in arp_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6 and int(fields[2], 16) & 0x2:
            found[(fields[5], fields[0])] = fields[3].lower()
    return found


def trusted_now(entries, route_text: str, arp_text: str) -> list:
    """The interfaces of ENTRIES whose network is trusted now."""
    gws, macs = gateways(route_text), neighbours(arp_text)
    out = []
    for iface, mac in entries:
        if mac is None or any(macs.get((iface, gw)) == mac for gw in gws.get(iface, ())):
            out.append(iface)
    return out


def trusted(settings) -> list:
    """The trusted interfaces as the kernel's tables say now (recorded for the cache)."""
    if not settings.trusted_lans:
        return []
    route = (inputs.read_if_there("/proc/net/route") or b"").decode()
    arp = (inputs.read_if_there("/proc/net/arp") or b"").decode()
    return trusted_now(settings.trusted_lans, route, arp)


def lan_rules(family, chain, settings, lan_on) -> list:
    """The LAN's rules on each trusted interface, each named for it (the guard's handle);
    lan_on(family, chain, settings, interface header): the LAN's rules (policy.py)."""
    out = []
    for iface in trusted(settings):
        named = (("comment", ((False, "--comment", f"{COMMENT} {iface}"),)),)
        on_iface = ((False, "-o" if chain == "OUTPUT" else "-i", iface),)
        out += [r._replace(matches=r.matches + named) for r in lan_on(family, chain, settings, on_iface)]
    return out


def read_trusted(entries) -> list:
    """trusted_now() from the files as they are (the guard's look)."""
    texts = []
    for path in ("/proc/net/route", "/proc/net/arp"):
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            texts.append("")
    return trusted_now(entries, *texts)


def recorded(ruleset) -> set:
    """The interfaces whose LAN allowance is among recorded rules (family -> Printed)."""
    marker = f'--comment "{COMMENT} '
    return {r.line.split(marker, 1)[1].split('"', 1)[0] for rules in ruleset.values() for r in rules if marker in r.line}


def without(ruleset, ifaces) -> dict:
    return {family: [r for r in rules if not any(f'--comment "{COMMENT} {i}"' in r.line for i in ifaces)]
            for family, rules in ruleset.items()}
