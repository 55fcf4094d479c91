"""Host names in $VPN_SERVERS, pinned: never resolved on the boot path.

`vpn-firewall refresh` resolves them, asking only $DNS_SERVERS (or, if unset, the
resolvers in /etc/resolv.conf), with a narrow allowance for exactly that in force for the
moment it takes, and writes the addresses to /var/lib/vpn-firewall/pinned.json; `start`
uses the addresses pinned last.
"""

import time

from . import kernel, state, values as V
from .errors import LoadError
from .model import JUDGED_MARK

ALLOWANCE_COMMENT = "vpn-firewall refresh"


def state_file() -> str:
    return state.in_state_dir("pinned.json")


def read_pins() -> dict:
    """name -> {"addresses": [...], "resolved": unix time}; empty when never refreshed."""
    import json  # only with host names: not on every boot's path

    from . import inputs

    data = inputs.read_if_there(state_file())
    try:
        pins = json.loads(data) if data is not None else {}
        return pins if isinstance(pins, dict) else {}
    except ValueError:
        return {}


def pin(settings, say):
    """Settings whose host-name endpoints are replaced by the addresses pinned for them."""
    if not any(ep.host for ep in settings.vpn_servers):
        return settings
    pins = read_pins()
    endpoints = []
    for ep in settings.vpn_servers:
        if ep.host is None:
            endpoints.append(ep)
            continue
        addresses = pins.get(ep.host, {}).get("addresses", [])
        if not addresses:
            say("warning", f"{ep.host} in $VPN_SERVERS has never been resolved, so nothing may reach it: "
                           "run 'vpn-firewall refresh'")
        for addr in addresses:
            family = V.IP6 if ":" in addr else V.IP
            endpoints.append(ep._replace(family=family, net=f"{addr}/{128 if family == V.IP6 else 32}"))
    return settings._replace(vpn_servers=tuple(endpoints))


def resolved(atom, kind, variables) -> list:
    """@resolve(NAME): the addresses `refresh` pinned for it (A: IPv4, AAAA: IPv6, else both),
    as atoms; never resolved here. Not yet pinned: none, and a warning (a rule without its
    addresses allows nothing)."""
    from .errors import ConfigError
    from .parser import Atom

    name = atom.text
    if not V.is_host(name):
        raise ConfigError(atom.pos, f"@resolve: expected a host name, got {name!r}")
    variables.resolving.add(name)
    addresses = read_pins().get(name, {}).get("addresses", [])
    if not addresses:
        variables.warnings.append(f"{atom.pos}: warning: {name} has never been resolved, so the rules naming "
                                  "it are left out: run 'vpn-firewall refresh' (names are never resolved at boot)")
    wanted = {None: (V.IP, V.IP6), "A": (V.IP,), "AAAA": (V.IP6,)}[kind]
    return [Atom("word", a, atom.pos) for a in addresses if (V.IP6 if ":" in a else V.IP) in wanted]


def resolvers(settings) -> list:
    if settings.dns_servers:
        return [net.split("/")[0] for _, net in settings.dns_servers]
    from .dnsquery import nameservers

    return nameservers(state.resolv_conf())


def _allowance(server: str, verb: str, at: int = 0) -> str:
    family = V.IP6 if ":" in server else V.IP
    net = f"{server}/{128 if family == V.IP6 else 32}"
    lines = [f"{verb} VPNFW-OUTPUT{f' {at}' if verb == '-I' else ''} -d {net} -p {proto} -m {proto} --dport 53 "
             f'-m owner --uid-owner 0 -m comment --comment "{ALLOWANCE_COMMENT}" -j ACCEPT'
             for proto in ("udp", "tcp")]
    return "*filter\n" + "\n".join(lines) + "\nCOMMIT\n"


def _after_judging(dump) -> int:
    """Where the allowance goes: right after the rule that marks packets as judged by our
    chain, which the fence wants (the tunnel's jumps may come before it)."""
    judging = f"-A VPNFW-OUTPUT -j MARK --set-xmark {JUDGED_MARK}"
    lines = dump.tables.get("filter", ({}, {}))[1].get("VPNFW-OUTPUT", [])
    return lines.index(judging) + 2 if judging in lines else 1


def refresh(settings, say, also=()) -> int:
    """Resolve the host names of $VPN_SERVERS (and `also`: @resolve's), pin them; 0 when
    every name got an address."""
    from .dnsquery import DNSError, resolve

    names = sorted({ep.host for ep in settings.vpn_servers if ep.host} | set(also))
    if not names:
        say("notice", "$VPN_SERVERS and @resolve name no host: nothing to refresh")
        return 0
    servers = resolvers(settings)
    if not servers:
        say("error", "no DNS server to ask: set $DNS_SERVERS or a nameserver in /etc/resolv.conf")
        return 1
    opened = []
    try:
        for server in servers:  # only while resolving, only root, only these servers
            family = V.IP6 if ":" in server else V.IP
            try:
                dump = kernel.save(family)
                if kernel.is_loaded(dump):
                    kernel.restore(family, _allowance(server, "-I", _after_judging(dump)))
                    opened.append(server)
            except LoadError as e:
                say("warning", f"could not open DNS to {server} for the refresh: {e}")
        pins, failed = read_pins(), 0
        for name in names:
            try:
                addresses = resolve(name, servers)
            except DNSError as e:
                addresses = []
                say("error", f"{name}: {e}")
            if addresses:
                pins[name] = {"addresses": sorted(set(addresses)), "resolved": int(time.time())}
                say("info", f"{name}: {' '.join(pins[name]['addresses'])}")
            else:
                failed += 1
                say("error", f"{name}: no address; the addresses pinned before stay")
    finally:
        for server in opened:
            try:
                kernel.restore(V.IP6 if ":" in server else V.IP, _allowance(server, "-D"))
            except LoadError as e:
                say("error", f"could not remove the DNS allowance for {server}: {e}; a reload removes it")
    _write(pins)
    return 1 if failed else 0


def _write(pins: dict) -> None:
    import json

    state.write_atomic(state_file(), (json.dumps(pins, indent=1, sort_keys=True) + "\n").encode())
