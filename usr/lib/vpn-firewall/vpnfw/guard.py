"""`vpn-firewall guard`: puts the rules in force back when another program removes or alters them.

The rules to put back are the ones recorded when they were loaded (in_force.py), never a
fresh compile of a config that may have changed on disk since. On iptables-nft the guard
sleeps on the kernel's own announcement of every nf_tables commit (netlink, group
NFNLGRP_NFTABLES), which also names the committing process; the legacy backend announces
nothing, so there it looks at the tables' sizes forty times a second (legacywatch.py,
no process, ~20 us a look) and compares the rules in full when they changed, and once a
second anyway. It takes the rules lock like start and reload, so it never fights them:
after a reload it guards the new rules.

It never opens anything: a repair that fails gives the lockdown, and a change that cannot
let anything out (another tool's rules above our jump in filter, a filter policy opened:
the fence decides all the same) is reported once and left alone.
"""

import json
import os
import select
import signal
import socket
import time

from . import differences, in_force, kernel, load, state
from .errors import LoadError, VerifyError
from .guard_ends import Ends
from .nftevents import drain, open_events
from .render import restore_input

POLL_SECONDS = 1.0  # legacy: the rules compared in full this often
LOOK_SECONDS = 0.025  # legacy: the tables' sizes looked at this often (legacywatch.py): worst repair <= 50 ms
LOG_BURST, LOG_WINDOW = 10, 60.0  # at most this many repair messages a minute
RETRY_FIRST, RETRY_MAX = 1.0, 60.0  # after a failed repair: the lockdown, then retries this far apart
CHANGED_AGAIN_MAX = 3  # repairs in a row undone before their read-back, before the lockdown
RECENT = 10  # repairs kept for `status`


def _open_rtnetlink():
    """A socket that hears of link, IPv4/IPv6 route and neighbour changes; None if it cannot."""
    groups = 0x1 | 0x4 | 0x40 | 0x400  # RTMGRP_LINK, _NEIGH, _IPV4_ROUTE, _IPV6_ROUTE
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
        sock.bind((0, groups))
        return sock
    except OSError:
        return None


def _drain_all(sock) -> None:
    while True:
        try:
            sock.recv(65536)
        except (BlockingIOError, OSError):
            return


class LogLimit:
    """At most LOG_BURST messages per LOG_WINDOW; then one line says how many were left out."""

    def __init__(self, say):
        self.say, self.window_start, self.count, self.dropped = say, 0.0, 0, 0

    def __call__(self, level, message):
        now = time.monotonic()
        if now - self.window_start >= LOG_WINDOW:
            if self.dropped:
                self.say("warning", f"{self.dropped} more messages of the guard were not logged in the last minute")
            self.window_start, self.count, self.dropped = now, 0, 0
        if self.count < LOG_BURST:
            self.count += 1
            self.say(level, message)
        else:
            self.dropped += 1


def _notify_ready() -> None:
    """Tell systemd (Type=notify) that the guard is watching."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(b"READY=1")
    except OSError:
        pass


def status_path() -> str:
    return state.in_run_dir("guard.json")


def read_status():
    """The guard's own account, if a guard is running now; else None."""
    try:
        with open(status_path()) as f:
            facts = json.load(f)
        with open(os.path.join(state.proc_dir(), str(facts["pid"]), "cmdline"), "rb") as f:
            if b"guard" not in f.read():
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return facts


def stop_running(say, timeout: float = 10.0) -> None:
    """Stop a running guard (unload): nothing may put the rules back after they are removed."""
    facts = read_status()
    if facts is None:
        return
    pid = facts["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and os.path.exists(os.path.join(state.proc_dir(), str(pid))):
        time.sleep(0.02)
    say("notice", f"the guard (pid {pid}) was stopped")


class Guard(Ends):
    def __init__(self, say, lock, adopt, tunnels=None, trust_entries=None):
        """lock(): the rules lock as a context manager; adopt(): a ruleset to guard when none
        was recorded (the config's, if the kernel holds exactly it), or None; tunnels(): the
        config's $VPN_INTERFACES, for the routes around the tunnel (routing.py);
        trust_entries(): the config's $TRUSTED_LANS (trust.py)."""
        self.tunnels, self.trust_entries = tunnels, trust_entries
        self.trusting = False  # the recorded rules hold a trusted network's LAN allowance
        self.log = LogLimit(say)
        self.say, self.lock, self.adopt = say, lock, adopt
        self.families = load.families()
        self.rules, self.stamp = None, None
        self.retry_at = {}  # family -> when to try its rules again after a failed repair
        self.portal_ends = None  # when the portal allowance among the rules ends (portal.ends_of)
        self.retry_wait = {}
        self.noted = {}  # family -> the harmless changes reported last
        self.facts = {"pid": os.getpid(), "since": int(time.time()), "repairs": 0, "recent": []}
        self.stopping = False
        self.watcher = None  # the legacy backend's cheap look (legacywatch.py), when it can look
        self.look = None
        self.look_again = False
        self.changed_again = {}  # family: repairs in a row that another program changed again
        self.compared_at = 0.0
        self.own_commits = set()  # pids of the repair's restores: their commits are verified already
        self.touched = set()  # the families announced changes touched since the last check
        self.excluded = False  # the recorded rules mark packets around the tunnel (exclusion.py, bypass.py)
        self.exclusions_at = 0.0  # when to look next whether those sessions still run, and at the routes

    # -- what to guard -------------------------------------------------------------
    def _refresh_rules(self) -> None:
        stamp = in_force.stamp()
        if self.rules is not None and stamp == self.stamp:
            return
        rules = in_force.read()
        if rules is None and self.rules is None:
            adopted = self.adopt()
            if adopted is not None:
                in_force.record(adopted)
                rules, stamp = in_force.read(), in_force.stamp()  # as recorded: Printed rules
        if rules is not None:
            from .portal import ends_of

            self.rules, self.stamp = rules, stamp
            self.retry_at.clear()
            self.portal_ends = ends_of(rules)
            from .routing import marks_in
            from .trust import recorded as trusted_in

            self.excluded = marks_in(rules)
            self.trusting = bool(trusted_in(rules))

    # -- watching ------------------------------------------------------------------
    def run(self) -> int:
        backend = kernel.backend()
        events = None
        if backend == "nft":
            try:
                events = open_events()
            except OSError as e:
                self.say("warning", f"cannot watch nf_tables commits ({e.strerror}): comparing every {POLL_SECONDS:g} s")
        else:
            try:
                from .legacywatch import Watcher

                self.watcher = Watcher(self.families, state.proc_dir())
            except OSError as e:
                self.say("warning", f"cannot look at the legacy tables ({e.strerror}): comparing every "
                                    f"{POLL_SECONDS:g} s")
        with self.lock():
            self._refresh_rules()
        if self.rules is None:
            self.say("notice", "nothing to guard: vpn-firewall has not loaded its rules "
                               "(systemctl start vpn-firewall starts both)")
            _notify_ready()  # a clean end, not a start that broke its promise (Type=notify)
            return 0
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        how = ("nf_tables commits" if events else
               f"table sizes every {LOOK_SECONDS:g} s, rules every {POLL_SECONDS:g} s" if self.watcher else
               f"compared every {POLL_SECONDS:g} s")
        self.facts.update(backend=backend, mode="netlink" if events else how)
        self.check([])
        self._write_status(running=True)
        self.say("info", f"guarding the rules in force ({', '.join(self.families)}; {how})")
        _notify_ready()
        network = _open_rtnetlink()  # a link, a route or a neighbour changed: trust looked at again
        watched = [wake_r] + ([events] if events else []) + ([network] if network else [])
        while not self.stopping:
            ready, _, _ = select.select(watched, [], [], self._timeout(events))
            if wake_r in ready:
                while True:
                    try:
                        if not os.read(wake_r, 64):
                            break
                    except BlockingIOError:
                        break
            if self.stopping:
                break
            if self._portal_over():
                self._end_portal()
            if self.excluded and time.monotonic() >= self.exclusions_at:
                self._end_exclusions()
            if network is not None and network in ready:
                _drain_all(network)
            if self.trusting and (network in ready or time.monotonic() >= self.exclusions_at):
                self._end_trust()
            who, touched = drain(events) if events in ready else ([], set())
            # kept until a check: a commit's messages may come in two drains, its NEWGEN in the second
            self.touched |= touched
            ours, self.own_commits = self.own_commits, set()
            if events and all(pid in ours for pid, _ in who) and not self._retry_due():
                continue  # nothing, or only the repair's own commit, read back after it already
            if self.watcher and not self._legacy_due():
                continue
            # on nf_tables only the families the changes touched are read (a retry: all)
            families = self.touched if events and who and not self._retry_due() else None
            self.touched = set()
            self.check(who, families)
        self.say("info", "guard stopped")
        self._write_status(running=False)
        return 0

    def _stop(self, signum, frame):
        self.stopping = True

    def _legacy_due(self) -> bool:
        """A full compare is due: the tables look different, a second has passed, or a retry."""
        return (self.watcher.fingerprint() != self.look or time.monotonic() - self.compared_at >= POLL_SECONDS
                or self._retry_due())

    def _timeout(self, events):
        if self.look_again:  # right after a repair: another tool's next command may be landing
            self.look_again = False
            return 0
        ends = self.portal_ends
        waits = [] if events else [LOOK_SECONDS if self.watcher else POLL_SECONDS]
        if self.excluded or self.trusting:
            waits.append(max(0.0, self.exclusions_at - time.monotonic()))
        if ends is not None:
            waits.append(max(0.0, ends - time.time()))
        if self.retry_at:
            waits.append(max(0.0, min(self.retry_at.values()) - time.monotonic()))
        return min(waits) if waits else None

    def _retry_due(self) -> bool:
        return any(t <= time.monotonic() for t in self.retry_at.values())

    # -- checking and repairing ----------------------------------------------------
    def check(self, who, families=None) -> None:
        """Compare the kernel with the rules (families: only these), repair what has holes."""
        self.compared_at = time.monotonic()
        if self.watcher:  # taken before the rules are read: a change made during the check shows next time
            self.look = self.watcher.fingerprint()
        with self.lock():
            self._refresh_rules()
            looked = [f for f in self.families if families is None or f in families]
            saving = {f: kernel.start_save(f) for f in looked}
            broken = {}
            for family in looked:
                try:
                    dump = kernel.dump_of(saving[family])
                except LoadError as e:
                    self.log("error", f"{family}: cannot read the rules: {e}")
                    continue
                holes, tables = self._differences(family, dump, who)
                if holes:
                    broken[family] = (dump, holes, tables)
                else:
                    self.changed_again.pop(family, None)
                    if self.retry_at.get(family, float("inf")) <= time.monotonic():
                        self.retry_at.pop(family, None)  # put right meanwhile: no repair due
            if broken:
                self._repair(broken, who)  # changes the look: the next tick compares once more
                # a flush is often one command of several (a firewall's reload): on legacy the
                # next look comes at once, not a tick after the repair and its read-back
                self.look_again = self.watcher is not None

    def _differences(self, family, dump, who):
        """(the holes, the tables to restore); harmless changes are reported once (not beside
        holes: they are put right too, in the tables that have holes)."""
        found = differences.differences_by_table(dump, self._target(family))
        holes = [text for kind, table, text in found if kind == differences.HOLE]
        tables = {table for kind, table, text in found if kind == differences.HOLE}
        if not holes:
            harmless = [text for kind, table, text in found if kind != differences.HOLE]
            if harmless and harmless != self.noted.get(family):
                self.log("notice", f"{family}: changed by another program, harmless (the fence still decides "
                                   f"what leaves): {'; '.join(harmless)}{_by(who)}")
            self.noted[family] = harmless
        return holes, tables

    def _target(self, family):
        """The recorded rules; the lockdown while a failed repair waits for its retry."""
        if family in self.retry_at and self.retry_at[family] > time.monotonic():
            from . import policy

            return policy.lockdown()[family]
        return self.rules[family]

    def _repair(self, broken: dict, who) -> None:
        """Every broken family's rules restored side by side, then each verified; a family
        that cannot be repaired gets the lockdown and a retry later."""
        started = time.monotonic()
        restoring = {f: kernel.start_restore(f, restore_input(self._target(f), kernel.table_states(dump), only=tables))
                     for f, (dump, _, tables) in broken.items()}
        self.own_commits = {r.pid for r in restoring.values() if r.pid}
        for family, (dump, holes, _) in broken.items():
            try:
                kernel.check_restored(restoring[family])
                ms = (time.monotonic() - started) * 1000  # in force from here; the check below only confirms
                # holes only: another tool's next command may open a filter policy between our
                # commit and this read-back (firewalld's reload does), which lets nothing out
                problems = differences.holes(kernel.save(family), self._target(family))
                if problems:
                    raise VerifyError("; ".join(problems))
                outcome = "repaired"
                self.retry_at.pop(family, None)
                self.retry_wait.pop(family, None)
                self.changed_again.pop(family, None)
            except (LoadError, VerifyError) as e:
                if isinstance(e, VerifyError) and self.changed_again.get(family, 0) < CHANGED_AGAIN_MAX:
                    # Our commit went in, and another program's next command came after it (a
                    # firewall's reload is several): compare and repair again at once, not the
                    # lockdown, which would block the VPN too until a retry a second later.
                    self.changed_again[family] = self.changed_again.get(family, 0) + 1
                    self.log("warning", f"{family}: changed again while being repaired ({e}): repairing again")
                    outcome, ms = "changed again", (time.monotonic() - started) * 1000
                    self.retry_at[family] = time.monotonic()
                else:
                    self.changed_again.pop(family, None)
                    self.log("error", f"{family}: could not put the rules back: {e}")
                    outcome = load.lockdown(family, self.log, record=False)  # the recorded rules stay the goal
                    ms = (time.monotonic() - started) * 1000
                    wait = min(RETRY_MAX, self.retry_wait.get(family, RETRY_FIRST / 2) * 2)
                    self.retry_wait[family] = wait
                    self.retry_at[family] = time.monotonic() + wait
            what = holes[0] + (f", and {len(holes) - 1} more" if len(holes) > 1 else "")
            level = "warning" if outcome in ("repaired", "changed again") else "error"
            self.log(level, f"{family}: rules changed by another program ({what}){_by(who)}: {outcome} in {ms:.0f} ms")
            self.facts["repairs"] += 1
            self.facts["recent"] = (self.facts["recent"] + [
                {"time": int(time.time()), "family": family, "what": what, "by": ", ".join(_names(who)) or None,
                 "outcome": outcome, "ms": round(ms, 1)}])[-RECENT:]
        self._write_status(running=True)

    def _write_status(self, running: bool) -> None:
        try:
            if not running:
                os.unlink(status_path())
                return
            state.write_atomic(status_path(), json.dumps(self.facts).encode())
        except OSError:
            pass


def _names(who) -> list:
    """'NAME (pid N)' of the processes the kernel named as committers, each once."""
    named = []
    for pid, name in who:
        text = f"{name} (pid {pid})" if pid else name
        if text not in named and name != "?":
            named.append(text)
    return named[:3]


def _by(who) -> str:
    named = _names(who)
    return f", by {', '.join(named)}" if named else ""
