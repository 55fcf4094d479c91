"""Running an exclusion (see exclusion.py): the command in a cgroup of its own, as the user who
ran sudo, its rules and routes in place while anything of it runs, taken out when the last
of it ends; both said in the system log.
"""

import os
import signal
import time

from . import exclusion, in_force, routing
from .portal import PortalError
from .portal_run import hold_signals, journal, make_cgroup, remove_cgroup, run_command

SYNC_SECONDS = 1.0  # the routes around the tunnel follow the main table this often


def shown(command) -> str:
    """A command on one line, each long argument cut short (a script given with -c)."""
    words = [" ".join(arg.split()) for arg in command]
    return " ".join(w if len(w) <= 60 else w[:57] + "..." for w in words)


def _describe(command, dns, ports) -> str:
    what = "everything" if not ports else "ports " + ", ".join(f"{spec.replace(':', '-')}/{p}" for p, spec in ports)
    return (f"{shown(command)} and its children EXCLUDED from the tunnel: {what} by the physical interfaces"
            f"{', DNS to ' + ', '.join(dns) if dns else ', DNS as everyone (no resolver of the network found)'}")


def session(command, dns, ports, tunnels, reload, say) -> int:
    """Put the session's rules in (reload() loads them), run the command, take them out when
    nothing of it runs any more (or vpn-firewall is stopped); the command's exit status."""
    now = time.time()
    session_id = f"{os.getpid()}-{int(now)}"
    try:
        cgroup, cgroup_dir = make_cgroup(session_id, exclusion.CGROUP_PARENT)
    except (PortalError, OSError) as e:
        say("error", f"exclude: {e}".replace("the portal needs", "an exclusion needs"))
        return 1
    exclusion.add_session({"id": session_id, "cgroup": cgroup, "dns": dns, "ports": ports, "command": command,
                           "pid": os.getpid(), "started": now})
    try:
        routing.sync(tunnels)
    except routing.RoutingError as e:
        _end(session_id, cgroup_dir, None, tunnels)
        say("error", f"exclude: {e}; nothing was opened")
        return 1
    code = reload()
    if code != 0:
        _end(session_id, cgroup_dir, None, tunnels)
        say("error", "exclude: could not load the exclusion's rules; nothing was opened")
        return code
    opened = _describe(command, dns, ports)
    say("warning", opened)
    journal(opened)

    hold_signals()
    reason = "the command exited"
    pid = status = None
    try:
        pid = run_command(command, cgroup_dir, say, what="exclude")
        status = _wait(pid, cgroup_dir, tunnels, say)
        return status
    except SystemExit:
        reason = "vpn-firewall exclude was stopped"
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        raise
    finally:
        message = f"exclusion ended ({reason}): {shown(command)}"
        if not _end(session_id, cgroup_dir, reload, tunnels):
            message += "; the reload failed: its rules stay until the next load (they match only its cgroup)"
        say("warning", message)
        journal(message)


def _wait(pid, cgroup_dir, tunnels, say) -> int:
    """The command's exit status, once nothing runs in its cgroup any more (children it left
    running stay excluded as long as they run); the routes kept in step meanwhile."""
    status, next_sync, told = None, time.monotonic() + SYNC_SECONDS, False
    while True:
        if status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw) if os.WIFEXITED(raw) else 128 + os.WTERMSIG(raw)
        if status is not None:
            if not _busy(cgroup_dir):
                return status
            if not told:
                told = True
                say("warning", "the command exited; processes it started still run, excluded, until they end "
                               "(stop this with Ctrl-\\ or kill to end the exclusion now)")
        if time.monotonic() >= next_sync:
            next_sync = time.monotonic() + SYNC_SECONDS
            try:
                routing.sync(tunnels)
            except routing.RoutingError as e:
                say("warning", f"exclude: routes around the tunnel not updated: {e}")
        time.sleep(0.05)


def _busy(cgroup_dir) -> bool:
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs")) as f:
            return bool(f.read().strip())
    except OSError:
        return False


def _end(session_id, cgroup_dir, reload, tunnels) -> bool:
    """The session forgotten, its rules out (reload), the routes too when it was the last;
    whether the reload worked."""
    exclusion.end_session(session_id)
    ok = reload is None or reload() == 0
    try:  # routes stay while the rules in force mark packets (another exclusion, a bypass unit)
        routing.settle(in_force.read() or {}, tunnels)
    except routing.RoutingError:
        pass
    remove_cgroup(cgroup_dir)
    return ok
