"""`vpn-firewall portal`: a captive portal's login page outside the tunnel, for one program,
for a few minutes, without opening the machine. This module: the session as data (its
file, its rules, its arguments); portal_run.py runs one.

The program runs in a cgroup (v2) of its own, which its children inherit; the allowance
matches that cgroup, so only they get out: tcp 80 and 443 anywhere, DNS to the network's
own resolver. The session is state in /run/vpn-firewall/portal.json, which the policy reads,
so that start, reload and the guard all keep the allowance while it lasts. Every rule of it
carries the session's end (`-m time --datestop`): when the time is up the kernel stops
matching them, whatever happens to vpn-firewall.
"""

import os
import time

from . import state, values as V
from .model import Rule

DEFAULT_SECONDS = 300
MAX_SECONDS = 3600
COMMENT = "vpn-firewall portal"
UNITS = {"s": 1, "m": 60, "h": 3600}


class PortalError(Exception):
    """A portal session cannot start: the reason, for the user."""


def duration(text: str) -> int:
    """'90s', '5m', '1h' or seconds: at most an hour."""
    import re

    m = re.match(r"^(\d+)([smh]?)$", text)
    if not m:
        raise PortalError(f"--for takes a duration such as 90s, 5m or 1h, not {text!r}")
    seconds = int(m.group(1)) * UNITS[m.group(2) or "s"]
    if not 1 <= seconds <= MAX_SECONDS:
        raise PortalError(f"--for takes a duration from 1s to {MAX_SECONDS // 60}m, not {text!r}")
    return seconds


def session_path() -> str:
    return state.in_run_dir("portal.json")


def read_session(now=None):
    """The open session (a dict), or None: none, ended, or its time is up."""
    from . import inputs

    data = inputs.read_if_there(session_path())  # a cached compile is one without a session
    if data is None:
        return None
    import json  # only with a session file: not on every boot's path

    try:
        session = json.loads(data)
    except ValueError:
        return None
    if not isinstance(session, dict) or session.get("until", 0) <= (now or time.time()):
        return None
    inputs.never()  # a session is of the moment: a compile with it is never kept
    return session


def write_session(session) -> None:
    import json

    state.write_atomic(session_path(), json.dumps(session).encode())


def end_session() -> None:
    try:
        os.unlink(session_path())
    except FileNotFoundError:
        pass


def ends_of(ruleset) -> float:
    """When the latest portal allowance among recorded rules (family -> Printed) ends, in
    seconds since the epoch; None when there is none."""
    import calendar

    ends = None
    for rules in ruleset.values():
        for rule in rules:
            if COMMENT in rule.line and "--datestop " in rule.line:
                stop = rule.line.split("--datestop ", 1)[1].split(" ", 1)[0]
                # the stop is the session's end rounded down to the second, and the kernel's
                # match holds through that second
                end = calendar.timegm(time.strptime(stop, "%Y-%m-%dT%H:%M:%S")) + 1
                ends = end if ends is None else max(ends, end)
    return ends


def without_allowance(ruleset) -> dict:
    return {family: [r for r in rules if COMMENT not in r.line] for family, rules in ruleset.items()}


def forget_ended() -> None:
    """The session file of a session whose time is up (its process was killed): gone."""
    if os.path.exists(session_path()) and read_session() is None:
        end_session()


def rules(family: str, session) -> list:
    """The session's allowance in OUTPUT: http, https and DNS to its resolvers, for its cgroup
    only, until its end."""
    stop = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(session["until"]))
    only = (("cgroup", ((False, "--path", session["cgroup"]),)),
            ("time", ((False, "--datestop", stop),)),
            ("comment", ((False, "--comment", COMMENT),)))
    out = [Rule(family, "filter", "OUTPUT", ((False, "-p", "tcp"),), (("tcp", ((False, "--dport", port),)),) + only,
                "ACCEPT") for port in ("80", "443")]
    for server in session["dns"]:
        if (V.IP6 if ":" in server else V.IP) != family:
            continue
        net = f"{server}/{128 if family == V.IP6 else 32}"
        out += [Rule(family, "filter", "OUTPUT", ((False, "-d", net), (False, "-p", proto)),
                     ((proto, ((False, "--dport", "53"),)),) + only, "ACCEPT") for proto in ("udp", "tcp")]
    return out


# -- the system's resolvers ----------------------------------------------------------------
def lease_resolvers() -> list:
    """The network's own resolvers, from resolv.conf (systemd-resolved's upstream list if it
    runs); loopback stubs left out."""
    from .dnsquery import nameservers

    for path in (state.resolv_conf(), "/run/systemd/resolve/resolv.conf"):
        found = [a for a in nameservers(path) if not a.startswith("127.") and a != "::1"]
        if found:
            return found
    return []


def dns_address(text: str) -> str:
    """--dns: one address, without a prefix."""
    from .errors import ConfigError
    from .parser import Atom

    try:
        _, net = V.address(Atom("word", text, None))
    except ConfigError:
        raise PortalError(f"--dns takes an address, not {text!r}") from None
    if not net.endswith(("/32", "/128")):
        raise PortalError(f"--dns takes one address, not a network ({text})")
    return net.rsplit("/", 1)[0]
