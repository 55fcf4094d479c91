"""`vpn-firewall portal`: a captive portal's login page outside the tunnel, for one program,
for a few minutes, without opening the machine.

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
CGROUP_PARENT = "vpn-firewall-portal"
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


# -- the cgroup ------------------------------------------------------------------------
def cgroup2_mount() -> str:
    """Where the unified (v2) cgroup hierarchy is mounted."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[sep + 1] == "cgroup2" and fields[3] == "/":
                    return fields[4]
    except (OSError, ValueError):
        pass
    raise PortalError("the cgroup v2 hierarchy is not mounted (Debian mounts it at /sys/fs/cgroup): "
                      "the portal needs it to let only your command out")


def make_cgroup(session_id: str):
    """(path in the hierarchy, directory) of a new cgroup for the session."""
    root = cgroup2_mount()
    parent = os.path.join(root, CGROUP_PARENT)
    os.makedirs(parent, exist_ok=True)
    for name in os.listdir(parent):  # what killed sessions left: empty ones go
        try:
            os.rmdir(os.path.join(parent, name))
        except OSError:
            pass
    relative = f"{CGROUP_PARENT}/{session_id}"
    os.mkdir(os.path.join(root, relative))
    return relative, os.path.join(root, relative)


def remove_cgroup(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:  # processes of the command still in it: the next session removes it
        pass


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


# -- the run ------------------------------------------------------------------------------
def run_command(command, cgroup_dir, say) -> int:
    """Start the command in the cgroup, as the user who ran sudo; its pid."""
    import signal

    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    pid = os.fork()
    if pid == 0:  # the child: into the cgroup, down to the user, then the command
        try:
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if uid and gid and uid != "0":
                import pwd

                user = pwd.getpwuid(int(uid))
                os.setgroups(os.getgrouplist(user.pw_name, int(gid)))
                os.setgid(int(gid))
                os.setuid(int(uid))
                os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            os.execvp(command[0], command)
        except OSError as e:
            os.write(2, f"vpn-firewall: error: portal: cannot run {command[0]}: {e.strerror}\n".encode())
            os._exit(127)
        os._exit(127)
    return pid


def wait(pid: int, until: float, on_time_up) -> int:
    """The command's exit status (128 + signal if a signal ended it); on_time_up() once when
    the time is up and the command still runs."""
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        if not timed_out and time.time() >= until:
            timed_out = True
            on_time_up()
        time.sleep(0.05)


def journal(message: str) -> None:
    """Also in the system log (the journal), for whoever looks later."""
    import syslog

    syslog.openlog("vpn-firewall", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_WARNING, message)


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


def session(command, seconds: int, dns, reload, lock, say) -> int:
    """Open the allowance (reload() loads the rules with it), run the command, close it when
    the command exits or the time is up; the command's exit status. lock: the rules lock."""
    import signal

    if not dns:
        say("warning", "no resolver of the network found in resolv.conf: the command's DNS stays blocked "
                       "(give one with --dns)")
    if read_session() is not None:
        say("error", "a portal session is open already (vpn-firewall status shows it)")
        return 1
    now = time.time()
    session_id = f"{os.getpid()}-{int(now)}"
    until = now + seconds
    with lock():
        try:
            cgroup, cgroup_dir = make_cgroup(session_id)
        except (PortalError, OSError) as e:
            say("error", f"portal: {e}")
            return 1
        write_session({"id": session_id, "cgroup": cgroup, "until": until, "dns": dns, "command": command,
                       "pid": os.getpid()})
    code = reload()
    if code != 0:
        end_session()
        remove_cgroup(cgroup_dir)
        say("error", "portal: could not load the allowance; nothing was opened")
        return code
    when = time.strftime("%H:%M:%S", time.localtime(until))
    opened = (f"portal OPEN for {' '.join(command)} and its children: tcp 80, 443"
              f"{' and DNS to ' + ', '.join(dns) if dns else ''} outside the tunnel, until {when} "
              f"({seconds // 60} min {seconds % 60} s) or until it exits")
    say("warning", opened)
    journal(opened)
    closed = []

    def close(reason):
        if closed:
            return
        closed.append(reason)
        end_session()
        message = f"portal closed ({reason})"
        if reload() != 0:  # the kernel still ends the allowance on time
            message += f"; the reload failed, the allowance ends at {when} anyway"
        say("warning", message)
        journal(message)

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's; its end ends the session
    signal.signal(signal.SIGTERM, terminate)
    pid = None
    try:
        pid = run_command(command, cgroup_dir, say)
        status = wait(pid, until, lambda: close("the time is up"))
        close("the command exited")
        return status
    except SystemExit:
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        close("vpn-firewall portal was stopped")
        raise
    finally:
        remove_cgroup(cgroup_dir)
