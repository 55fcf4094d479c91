"""`vpn-firewall status`: what is loaded, whether it is the config's, what it blocked.

The facts are gathered into one dict, printed for people or, with --json, for scripts.
"""

import json
import re
import sys
import time

from . import differences, kernel, links, load, state
from .errors import ConfigError, LoadError
from .model import BUILTIN_CHAINS, TUNNEL_FLOW_CHAIN, our_chain
from .portal import COMMENT as PORTAL_COMMENT

from .exits import DIFFERENT, IN_SYNC, NOT_LOADED
LOG_LINE = re.compile(r"vpn-firewall blocked (\w+): (.*)")


def vpn_interfaces(links_here, patterns) -> list:
    """(name, operstate) of the interfaces that match iptables-style names ('tun+')."""
    return [(link.name, link.state) for link in links_here if links.matches(link.name, patterns)]


def blocked(dump) -> tuple:
    """({chain: packets}, [(chain, rule, packets)]) of the DROP and REJECT rules in our chains."""
    rules = dump.tables.get("filter", ({}, {}))[1]
    per_chain, per_rule = {}, []
    for builtin in BUILTIN_CHAINS["filter"] + (TUNNEL_FLOW_CHAIN,):  # the last: spoofed packets of tunnel flows
        chain = our_chain(builtin)
        total = 0
        for line, (packets, _) in zip(rules.get(chain, []), dump.counters.get(("filter", chain), [])):
            if line.endswith(" -j DROP") or " -j REJECT" in line:
                total += packets
                if packets:
                    per_rule.append((builtin, line, packets))
        per_chain[builtin] = total
    return per_chain, per_rule


def excluded_packets(dump) -> dict:
    """session id -> packets its accept rule let out (exclusion.py names each by a comment)."""
    from .exclusion import COMMENT

    rules = dump.tables.get("filter", ({}, {}))[1]
    chain = our_chain("OUTPUT")
    found = {}
    for line, (packets, _) in zip(rules.get(chain, []), dump.counters.get(("filter", chain), [])):
        if f'--comment "{COMMENT} ' in line:
            found[line.split(f'--comment "{COMMENT} ', 1)[1].split('"', 1)[0]] = packets
    return found


def recent_blocked(limit: int = 10):
    """The latest 'vpn-firewall blocked' kernel log lines, parsed; None when no log is readable."""
    import subprocess

    path = state.kern_log()
    lines = None
    if path is None:
        try:
            out = subprocess.run(["journalctl", "-k", "-o", "cat", "--no-pager", "-n", "2000"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                lines = out.stdout.splitlines()
        except (OSError, subprocess.TimeoutExpired):
            pass
        path = "/var/log/kern.log"
    if lines is None:
        try:
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()[-2000:]
        except OSError:
            return None
    found = []
    for line in lines:
        m = LOG_LINE.search(line)
        if m:
            fields = dict(word.split("=", 1) for word in m.group(2).split() if "=" in word)
            port = fields.get("DPT", "")
            found.append({"direction": m.group(1), "interface": fields.get("OUT") or None,
                          "destination": fields.get("DST"), "protocol": fields.get("PROTO"),
                          "port": int(port) if port.isdigit() else None})
    return found[-limit:]


def gather(config_dir: str, compile_config) -> dict:
    backend = kernel.backend()
    facts = {"backend": backend, "other_backend_rules": kernel.other_backend_rules(backend),
             "families": {}, "config": {"directory": config_dir, "valid": True, "error": None}}
    try:
        compiled = compile_config()
    except (ConfigError, LoadError) as e:
        compiled = None
        facts["config"].update(valid=False, error=str(e))
    code = IN_SYNC
    counted = {}  # exclusion session -> packets it sent outside the tunnel, both families
    facts["config"]["warnings"] = [text for kind, text in compiled.said] if compiled else []
    facts["vpn_servers_reachable"] = compiled.servers if compiled else None
    if compiled is not None and not compiled.servers:
        code = DIFFERENT
    for family in load.families():
        entry = facts["families"][family] = {}
        try:
            dump = kernel.save(family, counters=True)
        except LoadError as e:
            entry.update(state="unreadable", error=str(e))
            code = max(code, NOT_LOADED)
            continue
        if not kernel.is_loaded(dump):
            entry["state"] = "not loaded"
            code = max(code, NOT_LOADED)
            continue
        entry["state"] = "lockdown" if load.is_lockdown(dump) else "loaded"
        found = differences.classified_differences(dump, compiled.ruleset[family]) if compiled is not None else []
        # another tool's rules above our jump, or an opened policy, cannot let anything out
        entry["harmless"] = [text for kind, text in found if kind != differences.HOLE]
        entry["differences"] = [text for kind, text in found if kind == differences.HOLE]
        entry["in_sync"] = compiled is not None and not entry["differences"]
        if entry["state"] == "lockdown" or not entry["in_sync"]:
            code = max(code, DIFFERENT)
        per_chain, per_rule = blocked(dump)
        for session_id, packets in excluded_packets(dump).items():
            counted[session_id] = counted.get(session_id, 0) + packets
        entry["blocked"] = per_chain
        entry["blocked_rules"] = [{"chain": c, "rule": r, "packets": p} for c, r, p in per_rule]
    patterns = list(compiled.settings.vpn_interfaces) if compiled else ["tun+", "wg+"]
    links_here = links.read_links()
    facts["vpn_interfaces"] = [{"name": n, "state": s} for n, s in vpn_interfaces(links_here, patterns)]
    facts["vpn_interface_patterns"] = patterns
    overlay_patterns = []
    if compiled is not None and (compiled.settings.overlays or compiled.settings.overlay_interfaces):
        from .overlays import of

        overlay_patterns = [i for o in of(compiled.settings) for i in o.interfaces]
    facts["overlays"] = [{"name": n, "state": s} for n, s in vpn_interfaces(links_here, overlay_patterns)]
    facts["overlay_patterns"] = overlay_patterns
    facts["paths_around"] = [{"interface": p.name, "what": p.what, "leak": p.fatal}
                             for p in links.paths_around(links_here, patterns)]
    facts["recent_blocked"] = recent_blocked()
    from .guard import read_status

    facts["guard"] = read_status()
    from .portal import read_session

    facts["portal"] = read_session()
    from .exclusion import read_sessions

    facts["exclusions"] = [{"command": x["command"], "pid": x["pid"], "dns": x["dns"], "ports": x["ports"],
                            "started": x.get("started"), "packets": counted.get(x["id"], 0)}
                           for x in read_sessions()]
    facts["exit"] = code
    return facts


def show(facts) -> None:
    print(f"backend: iptables-{facts['backend']}")
    if facts["other_backend_rules"]:
        print(f"warning: the other iptables backend holds rules too ({', '.join(facts['other_backend_rules'])}): "
              "both apply to every packet")
    for family, entry in facts["families"].items():
        state = entry["state"]
        if state == "not loaded":
            print(f"{family}: NOT LOADED: this family is not protected by vpn-firewall")
            continue
        if state == "unreadable":
            print(f"{family}: cannot read the rules: {entry['error']}")
            continue
        if state == "lockdown":
            text = "LOCKDOWN (a start failed: everything but loopback is dropped)"
        elif not facts["config"]["valid"]:
            text = "loaded; the config on disk is invalid, so the rules in force are an older config's"
        elif entry["in_sync"]:
            text = "loaded, the same as the config compiles to"
        elif facts["portal"] is None and any(PORTAL_COMMENT in d for d in entry["differences"]):
            text = ("loaded, with the rules of a portal session whose time is up still in (inert: the kernel "
                    "ended them on time); the guard takes them out, or run 'vpn-firewall reload'")
        else:
            first, more = entry["differences"][0], len(entry["differences"]) - 1
            text = (f"loaded, but not what the config compiles to ({first}{f', and {more} more' if more else ''}): "
                    "the config changed since, or something else changed the rules; run 'vpn-firewall reload'")
        print(f"{family}: {text}")
        if entry["harmless"]:
            print(f"{family}: changed by another program, harmless (the fence still decides what leaves): "
                  + "; ".join(entry["harmless"]))
        print(f"{family}: blocked packets: " + ", ".join(f"{c} {n}" for c, n in entry["blocked"].items()))
        for rule in entry["blocked_rules"]:
            print(f"{family}:   {rule['packets']:>8}  {rule['rule']}")
    if not facts["config"]["valid"]:
        print(f"config: {facts['config']['error']}")
    for warning in facts["config"]["warnings"]:
        print(f"config: {warning if ': warning: ' in warning else 'warning: ' + warning}")
    guard = facts["guard"]
    if guard is None and not any(e["state"] in ("loaded", "lockdown") for e in facts["families"].values()):
        print("guard: not running: nothing of vpn-firewall's is loaded (systemctl start vpn-firewall starts both)")
    elif guard is None:
        print("guard: NOT running: changes by other programs are not repaired (systemctl start vpn-firewall-guard)")
    else:
        print(f"guard: running (pid {guard['pid']}, {guard.get('mode', '?')}), {guard['repairs']} repair(s)")
        for r in guard["recent"][-3:]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
            print(f"  {when} {r['family']}: {r['what']}{' by ' + r['by'] if r['by'] else ''}: "
                  f"{r['outcome']} in {r['ms']:.0f} ms")
    portal = facts["portal"]
    if portal:
        until = time.strftime("%H:%M:%S", time.localtime(portal["until"]))
        print(f"portal OPEN for {' '.join(portal['command'])} and its children (pid {portal['pid']}): tcp 80, 443"
              f"{' and DNS to ' + ', '.join(portal['dns']) if portal['dns'] else ''} until {until}")
    for x in facts["exclusions"]:
        what = "everything" if not x["ports"] else "ports " + ", ".join(f"{spec.replace(':', '-')}/{p}"
                                                                         for p, spec in x["ports"])
        from .exclusion_run import shown

        print(f"EXCLUDED from the tunnel: {shown(x['command'])} and its children (vpn-firewall pid {x['pid']}): "
              f"{what}{', DNS to ' + ', '.join(x['dns']) if x['dns'] else ''}; {x['packets']} packets out so far")
    shown = ", ".join(f"{i['name']} ({i['state']})" for i in facts["vpn_interfaces"]) or "none present"
    print(f"vpn interfaces ({' '.join(facts['vpn_interface_patterns'])}): {shown}")
    if facts["overlay_patterns"]:
        # a tun device's operstate is "unknown" while it is up
        up = [i for i in facts["overlays"] if i["state"] in ("up", "unknown")]
        tunnel_up = any(i["state"] in ("up", "unknown") for i in facts["vpn_interfaces"])
        shown = ", ".join(f"{i['name']} ({i['state']})" for i in facts["overlays"]) or "none present"
        print(f"overlays ({' '.join(facts['overlay_patterns'])}): {shown}"
              + ("; overlay up, VPN down: everything else is blocked" if up and not tunnel_up else ""))
    for path in facts["paths_around"]:
        print(f"{'LEAK' if path['leak'] else 'warning'}: around the firewall: {path['interface']}: {path['what']}")
    recent = facts["recent_blocked"]
    if recent is None:
        print("recently blocked: the kernel log is not readable here")
    elif recent:
        print("recently blocked:")
        for r in recent:
            port = f":{r['port']}" if r["port"] else ""
            via = f" via {r['interface']}" if r["interface"] else ""
            print(f"  {r['direction']:4} {r['protocol']} {r['destination']}{port}{via}")


def status(config_dir: str, compile_config, as_json: bool = False, prometheus: bool = False) -> int:
    facts = gather(config_dir, compile_config)
    if prometheus:  # the state is in the metrics; 0: every metric was printed
        from .prometheus import text

        sys.stdout.write(text(facts))
        return 0
    if as_json:
        print(json.dumps(facts, indent=2))
    else:
        show(facts)
    return facts["exit"]
