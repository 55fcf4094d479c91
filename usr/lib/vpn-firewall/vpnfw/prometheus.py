"""`vpn-firewall status --prometheus`: status's facts in Prometheus' text exposition format,
for node_exporter's textfile collector (Debian's prometheus-node-exporter reads
/var/lib/prometheus/node-exporter/*.prom); vpn-firewall-prometheus.timer (off by default)
writes them there atomically every 30 seconds. Every fact as a number: 1/0 for yes/no.
"""

PREFIX = "vpn_firewall_"


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


def text(facts) -> str:
    """The exposition of status.gather()'s facts."""
    out = []

    def metric(name, kind, help_text, samples):
        out.append(f"# HELP {PREFIX}{name} {help_text}")
        out.append(f"# TYPE {PREFIX}{name} {kind}")
        for labels, value in samples:
            out.append(f"{PREFIX}{name}{_labels(labels)} {value}")

    families = facts["families"]
    metric("rules_loaded", "gauge", "1 when the family's rules of vpn-firewall are loaded (or its lockdown)",
           [({"family": f}, int(e["state"] in ("loaded", "lockdown"))) for f, e in families.items()])
    metric("rules_in_sync", "gauge", "1 when the kernel's rules are what the config compiles to",
           [({"family": f}, int(bool(e.get("in_sync")))) for f, e in families.items()])
    metric("lockdown", "gauge", "1 when the lockdown is loaded (a start failed: all but loopback dropped)",
           [({"family": f}, int(e["state"] == "lockdown")) for f, e in families.items()])
    metric("blocked_packets_total", "counter", "packets our chains dropped or rejected, by chain",
           [({"family": f, "chain": c}, n) for f, e in families.items() for c, n in e.get("blocked", {}).items()])
    metric("config_valid", "gauge", "1 when the config on disk compiles",
           [({}, int(facts["config"]["valid"]))])
    metric("vpn_servers", "gauge", "VPN server endpoints with an address (0: no VPN client can connect)",
           [({}, facts["vpn_servers_reachable"] or 0)])
    up = [i for i in facts["vpn_interfaces"] if i["state"] in ("up", "unknown")]
    metric("tunnel_interfaces_up", "gauge", "VPN interfaces present and up", [({}, len(up))])
    metric("paths_around", "gauge", "interfaces that lead around the firewall (leak: named like the tunnel)",
           [({"leak": str(bool(p["leak"])).lower()}, n) for p, n in _count_paths(facts["paths_around"])])
    guard = facts["guard"]
    metric("guard_running", "gauge", "1 when the guard runs", [({}, int(guard is not None))])
    metric("guard_repairs_total", "counter", "repairs the running guard made", [({}, guard["repairs"] if guard else 0)])
    last = max((r["time"] for r in guard["recent"]), default=0) if guard else 0
    metric("guard_last_repair_timestamp_seconds", "gauge", "when the guard last repaired (0: never)", [({}, last)])
    metric("exclusions_open", "gauge", "programs running outside the tunnel (vpn-firewall exclude)",
           [({}, len(facts.get("exclusions", [])))])
    metric("portal_open", "gauge", "1 while a portal session is open", [({}, int(bool(facts.get("portal"))))])
    metric("status_exit_code", "gauge", "what vpn-firewall status would exit with (0: in sync)",
           [({}, facts["exit"])])
    return "\n".join(out) + "\n"


def _count_paths(paths):
    counts = {True: 0, False: 0}
    for p in paths:
        counts[bool(p["leak"])] += 1
    return [({"leak": leak}, n) for leak, n in counts.items()]
