"""`vpn-firewall exclude`: one program (and its children) outside the tunnel for as long as
it runs, everything else kept in. This module: the sessions as data (their files, their
rules); exclusion_run.py runs one, routing.py gives its packets a way around the tunnel.

The program runs in a cgroup (v2) of its own, entered before it is executed. Its packets
are marked in mangle OUTPUT (EXCLUDED_BIT): all of them, or with --ports only those to the
ports named, and DNS only to the network's resolvers (or --dns); any other DNS of it stays
unmarked and goes where everyone's goes. A marked packet is routed by a table of the main
table's routes without the tunnel's (routing.py), leaves with the address of the interface
it leaves by (masquerade: its socket may have picked the tunnel's), and is accepted in
filter OUTPUT only with both the cgroup and the mark; only root can set either. Each
session is an entry in /run/vpn-firewall/exclusions.json, which the policy reads, so that start,
reload and the guard keep its rules while its command runs; a session whose command and
vpn-firewall process are both gone is forgotten by the next load.
"""

import os

from . import state, values as V
from .model import EXCLUDED_BIT, FENCE_TABLE, Rule, our_chain

COMMENT = "vpn-firewall exclude"
EXCLUDED = f"0x{EXCLUDED_BIT:x}/0x{EXCLUDED_BIT:x}"
CGROUP_PARENT = "vpn-firewall-exclude"


class ExclusionError(Exception):
    """An exclusion cannot start: the reason, for the user."""


def sessions_path() -> str:
    return state.in_run_dir("exclusions.json")


def ports(text: str) -> list:
    """--ports: 'PORT[-PORT][/tcp|/udp],...' -> [(protocol, 'PORT' or 'FIRST:LAST')]; no
    protocol: both."""
    out = []
    for item in text.split(","):
        spec, _, proto = item.strip().partition("/")
        protos = (proto,) if proto else ("tcp", "udp")
        first, _, last = spec.partition("-")
        if proto not in ("", "tcp", "udp") or not _port(first) or (last and not _port(last)) \
                or (last and int(last) < int(first)):
            raise ExclusionError(f"--ports takes ports such as 443,8000-8100/tcp,3478/udp, not {item.strip()!r}")
        out += [(p, f"{first}:{last}" if last else first) for p in protos]
    return out


def _port(text: str) -> bool:
    return text.isdigit() and 1 <= int(text) <= 65535


def _alive(pid) -> bool:
    """Whether a session's vpn-firewall process runs: not gone, not a zombie nobody reaped, and
    not another program that got its number since."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError, TypeError):
        return False
    return stat.rsplit(b")", 1)[-1].split()[0] != b"Z" and b"exclude" in cmdline


def _cgroup_busy(cgroup: str) -> bool:
    """Whether processes are in the session's cgroup (its command or a child of it)."""
    from .portal_run import cgroup2_mount

    try:
        with open(os.path.join(cgroup2_mount(), cgroup, "cgroup.procs")) as f:
            return bool(f.read().strip())
    except Exception:  # noqa: BLE001  no hierarchy, no cgroup: nobody in it
        return False


def live(session) -> bool:
    """Its vpn-firewall process runs (the command may not have entered yet), or its command."""
    return _alive(session.get("pid")) or _cgroup_busy(session.get("cgroup", ""))


def read_sessions() -> list:
    """The sessions whose command or vpn-firewall process still runs, oldest first."""
    from . import inputs

    data = inputs.read_if_there(sessions_path())  # the cache's compile is one without sessions
    if data is None:
        return []
    inputs.never()  # sessions are of the moment: a compile with them is never kept
    return [s for s in _parse(data) if live(s)]


def _parse(data: bytes) -> list:
    import json

    try:
        found = json.loads(data or b"[]")
    except ValueError:
        return []
    return [s for s in found if isinstance(s, dict) and isinstance(s.get("cgroup"), str) and "id" in s] \
        if isinstance(found, list) else []


def _update(change) -> list:
    """The sessions file rewritten as change(sessions) returns it, under its own lock (sessions
    start and end beside each other); what it holds now."""
    import fcntl
    import json

    os.makedirs(os.path.dirname(sessions_path()), mode=0o755, exist_ok=True)
    with open(sessions_path(), "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        sessions = change(_parse(f.read()))
        f.seek(0)
        f.truncate()
        f.write(json.dumps(sessions).encode())
        f.flush()
        os.fsync(f.fileno())
    if not sessions:
        try:
            os.unlink(sessions_path())  # none: the boot's cached compile holds again
        except FileNotFoundError:
            pass
    return sessions


def add_session(session) -> None:
    _update(lambda sessions: sessions + [session])


def end_session(session_id: str) -> None:
    _update(lambda sessions: [s for s in sessions if s["id"] != session_id])


def forget_ended() -> list:
    """The sessions that are over (their command and their vpn-firewall process gone), and
    their empty cgroups, forgotten; their ids."""
    if not os.path.exists(sessions_path()):
        return []
    from .portal_run import cgroup2_mount, remove_cgroup

    gone = []

    def keep_live(sessions):
        for s in sessions:
            if not live(s):
                gone.append(s["id"])
                try:
                    remove_cgroup(os.path.join(cgroup2_mount(), s["cgroup"]))
                except Exception:  # noqa: BLE001  no hierarchy: nothing to remove
                    pass
        return [s for s in sessions if s["id"] not in gone]

    _update(keep_live)  # the routes: the load after it settles them (routing.keep)
    return gone


def _comment(session) -> tuple:
    return ("comment", ((False, "--comment", session.get("comment") or f"{COMMENT} {session['id']}"),))


def rules(family: str, sessions) -> list:
    """Every live session's rules of this family: the marking chain in mangle, the accept
    in filter OUTPUT and its pass in the fence (the caller places both), masquerade in nat.
    A session may name its own chain and comment ($BYPASS_UNITS' units do: bypass.py)."""
    out = []
    for index, session in enumerate(sessions, 1):
        chain = session.get("chain") or f"EXCLUDE-{index}"
        cgroup = ("cgroup", ((False, "--path", session["cgroup"]),))
        out.append(Rule(family, "mangle", "OUTPUT", (), (cgroup,), our_chain(chain)))
        out += _marking(family, chain, session)
        marked = (cgroup, ("mark", ((False, "--mark", EXCLUDED),)), _comment(session))
        out.append(Rule(family, "filter", "OUTPUT", (), marked, "ACCEPT"))
        # our filter chain accepts it before it marks anything judged: the fence knows it too
        out.append(Rule(family, FENCE_TABLE, "OUTPUT", (), marked, "RETURN"))
    if sessions:
        # its socket may have an address of the tunnel's: the interface's, as it leaves
        out.append(Rule(family, "nat", "POSTROUTING", ((True, "-o", "lo"),),
                        (("mark", ((False, "--mark", EXCLUDED),)),), "MASQUERADE"))
    return out


def _marking(family, chain, session) -> list:
    mark = ("MARK", (("--set-xmark", EXCLUDED),))
    out = []
    for server in session.get("dns", []):
        if (V.IP6 if ":" in server else V.IP) != family:
            continue
        net = f"{server}/{128 if family == V.IP6 else 32}"
        out += [Rule(family, "mangle", chain, ((False, "-d", net), (False, "-p", p)),
                     ((p, ((False, "--dport", "53"),)),), *mark) for p in ("udp", "tcp")]
    # any other DNS of it: unmarked, so where everyone's goes (the tunnel, $DNS_SERVERS)
    out += [Rule(family, "mangle", chain, ((False, "-p", p),), ((p, ((False, "--dport", "53"),)),), "RETURN")
            for p in ("udp", "tcp")]
    if session.get("ports"):
        out += [Rule(family, "mangle", chain, ((False, "-p", p),), ((p, ((False, "--dport", spec),)),), *mark)
                for p, spec in session["ports"]]
    else:
        out.append(Rule(family, "mangle", chain, (), (), *mark))
    return out


# -- for the guard: a session that ended while its vpn-firewall process was gone ----------
def recorded(ruleset) -> set:
    """The ids of the sessions whose rules are among recorded rules (family -> Printed)."""
    marker = f'--comment "{COMMENT} '
    return {r.line.split(marker, 1)[1].split('"', 1)[0]
            for rules in ruleset.values() for r in rules if r.table == "filter" and marker in r.line}


def ended(ruleset) -> set:
    """Sessions whose rules are recorded, but nothing of which runs any more."""
    ids = recorded(ruleset)
    return ids - {s["id"] for s in read_sessions()} if ids else set()


def without(ruleset, ids) -> dict:
    """Recorded rules without those of the sessions IDS (and without masquerade when none is
    left): what the loads would have been without them."""
    out = {}
    for family, rules in ruleset.items():
        paths = [f'"{CGROUP_PARENT}/{i}"' for i in ids]
        jumps = [r for r in rules if r.table == "mangle" and any(p in r.line for p in paths)]
        chains = {r.line.rsplit(" -j ", 1)[1].removeprefix("VPNFW-") for r in jumps}
        gone = set(ids)
        keep = [r for r in rules if r not in jumps and not (r.table == "mangle" and r.chain in chains)
                and not any(f'--comment "{COMMENT} {i}"' in r.line for i in gone)]
        if not any(r.table == "filter" and f"--mark {EXCLUDED}" in r.line for r in keep):
            keep = [r for r in keep if not (r.table == "nat" and " -j MASQUERADE" in r.line
                                            and f"--mark {EXCLUDED}" in r.line)]
        out[family] = keep
    return out
