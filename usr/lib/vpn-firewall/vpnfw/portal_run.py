"""Running a portal session (see portal.py): the command in a cgroup of its own, as the user
who ran sudo, the allowance loaded while it runs and taken out when it ends, both said in
the system log.
"""

import os
import time

from .portal import PortalError, end_session, read_session, write_session

CGROUP_PARENT = "vpn-firewall-portal"


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


def make_cgroup(session_id: str, parent_name: str = CGROUP_PARENT):
    """(path in the hierarchy, directory) of a new cgroup for the session, under parent_name
    (the portal's, or the exclusions')."""
    root = cgroup2_mount()
    parent = os.path.join(root, parent_name)
    os.makedirs(parent, exist_ok=True)
    for name in os.listdir(parent):  # what killed sessions left: empty ones go
        if _alive(name.split("-")[0]):  # a session starting beside this one: its cgroup is empty until its command enters
            continue
        try:
            os.rmdir(os.path.join(parent, name))
        except OSError:
            pass
    relative = f"{parent_name}/{session_id}"
    os.mkdir(os.path.join(root, relative))
    return relative, os.path.join(root, relative)


def _alive(pid: str) -> bool:
    """Whether the vpn-firewall process that made a session's cgroup (named PID-TIME) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def remove_cgroup(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:  # processes of the command still in it: the next session removes it
        pass


# -- the run ------------------------------------------------------------------------------
def run_command(command, cgroup_dir, say, what="portal") -> int:
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
            os.write(2, f"vpn-firewall: error: {what}: cannot run {command[0]}: {e.strerror}\n".encode())
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


def hold_signals() -> None:
    """While a session's command runs: Ctrl-C is the command's (its end ends the session);
    SIGTERM and SIGQUIT end the session, through its cleanup (SystemExit)."""
    import signal

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGQUIT, terminate)


def journal(message: str) -> None:
    """Also in the system log (the journal), for whoever looks later."""
    import syslog

    syslog.openlog("vpn-firewall", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_WARNING, message)


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

    hold_signals()
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
