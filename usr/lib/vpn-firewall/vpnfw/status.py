"""`vpn-firewall status`: what is loaded, whether it is the config's, what it blocked."""

import os

from . import kernel, load
from .errors import ConfigError, LoadError
from .model import BUILTIN_CHAINS, our_chain

IN_SYNC, DIFFERENT, NOT_LOADED = 0, 1, 3


def vpn_interfaces(patterns) -> list:
    """(name, operstate) of the interfaces that match iptables-style names ('tun+')."""
    sys_net = os.path.join(os.environ.get("VPN_FIREWALL_SYS", "/sys"), "class", "net")
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return []
    found = []
    for name in names:
        if any(name.startswith(p[:-1]) if p.endswith("+") else name == p for p in patterns):
            try:
                with open(os.path.join(sys_net, name, "operstate")) as f:
                    state = f.read().strip()
            except OSError:
                state = "unknown"
            found.append((name, state))
    return found


def blocked_counts(dump) -> dict:
    """our chain -> packets that met DROP or REJECT rules in it."""
    policies, rules = dump.tables.get("filter", ({}, {}))
    counts = {}
    for builtin in BUILTIN_CHAINS["filter"]:
        chain = our_chain(builtin)
        lines = rules.get(chain, [])
        numbers = dump.counters.get(("filter", chain), [])
        counts[builtin] = sum(
            packets for line, (packets, _) in zip(lines, numbers)
            if line.endswith(" -j DROP") or " -j REJECT" in line
        )
    return counts


def status(config_dir: str, compile_ruleset, say) -> int:
    backend = kernel.backend()
    print(f"backend: iptables-{backend}")
    others = kernel.other_backend_rules(backend)
    if others:
        say("warning", f"the other iptables backend holds rules too ({', '.join(others)}): both apply to every packet")
    try:
        compiled, config_problem = compile_ruleset(), None
    except (ConfigError, LoadError) as e:
        compiled, config_problem = None, str(e)
    ruleset = compiled.ruleset if compiled else None
    code = IN_SYNC
    for family in load.families():
        try:
            dump = kernel.save(family, counters=True)
        except LoadError as e:
            print(f"{family}: cannot read the rules: {e}")
            code = max(code, NOT_LOADED)
            continue
        if not kernel.is_loaded(dump):
            print(f"{family}: NOT LOADED: this family is not protected by vpn-firewall")
            code = max(code, NOT_LOADED)
            continue
        if load.is_lockdown(dump):
            state = "LOCKDOWN (a start failed: everything but loopback is dropped)"
            code = max(code, DIFFERENT)
        elif ruleset is None:
            state = "loaded; the config on disk is invalid, so the rules in force are an older config's"
            code = max(code, DIFFERENT)
        elif not load.differences(dump, ruleset[family]):
            state = "loaded, the same as the config compiles to"
        else:
            state = "loaded, but the config on disk has changed since: run 'vpn-firewall reload'"
            code = max(code, DIFFERENT)
        print(f"{family}: {state}")
        counts = blocked_counts(dump)
        print(f"{family}: blocked packets: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    if config_problem:
        print(f"config: {config_problem}")
    patterns = list(compiled.settings.vpn_interfaces) if compiled else ["tun+", "wg+"]
    present = vpn_interfaces(patterns)
    shown = ", ".join(f"{n} ({s})" for n, s in present) or "none present"
    print(f"vpn interfaces ({' '.join(patterns)}): {shown}")
    return code

