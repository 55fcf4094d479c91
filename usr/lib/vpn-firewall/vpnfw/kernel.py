"""Talking to the kernel through iptables' own tools: save, restore, and what they tell.

Binaries are found on PATH, so a test can put a stand-in first; /proc is found under
VPN_FIREWALL_PROC for the same reason.

The tools run as child processes started now and collected later (Running), so that
both families, and the reading of the kernel's state, go side by side without threads.
Their input and output are anonymous in-memory files (memfd), not pipes: neither side
can block on a full pipe. (This module is on the boot path: subprocess, threading and
shutil would cost more to import than most rulesets take to compile.)
"""

import os
import select
from collections import namedtuple

from . import state
from .errors import LoadError
from .model import CHAIN_PREFIX, OUR_TABLES, our_chain
from .render import TableState

TOOL_PREFIX = {"ip": "iptables", "ip6": "ip6tables"}
WAIT = ("-w", "10")  # wait for the xtables lock rather than fail at boot beside another tool
TIMEOUT = 60


class Dump(namedtuple("Dump", "tables counters")):
    """iptables-save of one family.

    tables:   table -> (policies {chain: policy}, rules {chain: [line]})
    counters: (table, chain) -> [(packets, bytes) per rule], when read with -c
    """

    __slots__ = ()


Finished = namedtuple("Finished", "returncode stdout stderr")



def ipv6_available() -> bool:
    """False when the kernel has no IPv6 at all (ipv6.disable=1): then ip6tables has nothing to guard."""
    return os.path.exists(os.path.join(state.proc_dir(), "net", "if_inet6"))


def tool(family: str, suffix: str = "") -> str:
    return TOOL_PREFIX[family] + suffix


def which(name: str):
    """The path `name` runs from, as PATH finds it; None when it is not there."""
    for directory in os.get_exec_path():
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name)  # close-on-exec; dup2 onto 0-2 in the child clears that
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_all(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


class Running:
    """A tool started now; finish() waits for it and returns what it said.
    Starting never raises: a tool that cannot be started says so at finish()."""

    def __init__(self, argv: list, stdin: str = None):
        self.argv = argv
        self.pid, self._error = None, None
        fds = [_memfd("stdin", (stdin or "").encode()), _memfd("stdout"), _memfd("stderr")]
        try:
            self.pid = os.posix_spawnp(argv[0], argv, os.environ,
                                       file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(fds)])
        except FileNotFoundError:
            self._error = LoadError(f"{argv[0]} not found: is the iptables package installed?")
        except OSError as e:
            self._error = LoadError(f"cannot run {argv[0]}: {e.strerror}")
        os.close(fds[0])
        self._out, self._err = fds[1], fds[2]

    def finish(self, timeout: float = TIMEOUT) -> Finished:
        """Wait for the tool; LoadError when it could not be started or did not finish in time."""
        try:
            if self._error is not None:
                raise self._error
            status = self._wait(timeout)
        finally:
            stdout, stderr = _read_all(self._out), _read_all(self._err)
        return Finished(os.waitstatus_to_exitcode(status), stdout, stderr)

    def _wait(self, timeout: float) -> int:
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # a kernel before 5.3: wait without a time limit
            return os.waitpid(self.pid, 0)[1]
        try:
            ready, _, _ = select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        if not ready:
            import signal  # only here: signal.py builds enums at import

            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            raise LoadError(f"{self.argv[0]} did not finish within {timeout} s")
        return os.waitpid(self.pid, 0)[1]


def run(argv: list, stdin: str = None, timeout: float = TIMEOUT) -> Finished:
    return Running(argv, stdin).finish(timeout)


def backend() -> str:
    """'nft' or 'legacy': which one 'iptables' is, told by where its link points."""
    path = which("iptables-restore")
    if path is None:
        return "missing"
    real = os.path.basename(os.path.realpath(path))
    if "nft" in real:
        return "nft"
    if "legacy" in real:
        return "legacy"
    out = run(["iptables", "-V"])
    return "nft" if "nf_tables" in out.stdout else "legacy" if "legacy" in out.stdout else "unknown"


def other_backend_rules(primary: str) -> list:
    """Families whose other backend holds rules too: both apply to every packet, which confuses."""
    found = []
    for family in ("ip", "ip6"):
        if primary == "nft":
            names = os.path.join(state.proc_dir(), "net", "ip_tables_names" if family == "ip" else "ip6_tables_names")
            try:
                with open(names) as f:
                    if not f.read().strip():
                        continue
            except OSError:
                continue
            other = tool(family, "-legacy-save")
        elif primary == "legacy":
            other = tool(family, "-nft-save")
        else:
            continue
        if which(other) is None:
            continue
        out = run([other])
        if out.returncode == 0 and any(line.startswith("-A ") for line in out.stdout.splitlines()):
            found.append(family)
    return found


def start_save(family: str, counters: bool = False) -> Running:
    return Running([tool(family, "-save")] + (["-c"] if counters else []))


def dump_of(saving: Running) -> Dump:
    out = saving.finish()
    if out.returncode != 0:
        raise LoadError(f"{saving.argv[0]} failed: {out.stderr.strip() or 'exit ' + str(out.returncode)}")
    return parse_save(out.stdout)


def save(family: str, counters: bool = False) -> Dump:
    return dump_of(start_save(family, counters))


def parse_save(text: str) -> Dump:
    tables, counters = {}, {}
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            tables[table] = ({}, {})
        elif line.startswith(":") and table:
            name, policy = line[1:].split()[:2]
            tables[table][0][name] = policy
            tables[table][1].setdefault(name, [])
        elif table and (line.startswith("-A ") or line.startswith("[")):
            count = None
            if line.startswith("["):
                head, line = line.split("] ", 1)
                packets, nbytes = head[1:].split(":")
                count = (int(packets), int(nbytes))
            chain = line.split(" ", 2)[1]
            tables[table][1].setdefault(chain, []).append(line)
            if count is not None:
                counters.setdefault((table, chain), []).append(count)
    return Dump(tables, counters)


def table_states(dump: Dump) -> dict:
    """table -> TableState: the jumps to our chains and which of ours exist."""
    states = {}
    for table, builtins in OUR_TABLES.items():
        policies, rules = dump.tables.get(table, ({}, {}))
        ours = frozenset(c for c in policies if c.startswith(CHAIN_PREFIX))
        jumps, first = {}, set()
        for c in builtins:
            jump = f"-A {c} -j {our_chain(c)}"
            lines = rules.get(c, ())
            n = sum(1 for line in lines if line == jump)
            if n:
                jumps[c] = n
                if lines[0] == jump:
                    first.add(c)
        dropping = frozenset(c for c in builtins if policies.get(c) == "DROP")
        states[table] = TableState(jumps, ours, frozenset(first), dropping)
    return states


def is_loaded(dump: Dump) -> bool:
    return our_chain("OUTPUT") in dump.tables.get("filter", ({}, {}))[0]


def start_restore(family: str, text: str, test: bool = False) -> Running:
    return Running([tool(family, "-restore"), "--noflush", *WAIT] + (["--test"] if test else []), stdin=text)


def check_restored(restoring: Running) -> None:
    """LoadError unless the restore went through (a failed one changed nothing)."""
    out = restoring.finish()
    if out.returncode != 0:
        what = "refused the ruleset (test)" if "--test" in restoring.argv else "failed"
        raise LoadError(f"{restoring.argv[0]} {what}: {out.stderr.strip() or 'exit ' + str(out.returncode)}")


def restore(family: str, text: str, test: bool = False) -> None:
    check_restored(start_restore(family, text, test))


def set_drop_policies(family: str) -> None:
    """The last resort when no ruleset could be restored: drop by policy, chain by chain."""
    errors = []
    for chain in ("OUTPUT", "INPUT", "FORWARD"):
        argv = [tool(family), *WAIT, "-P", chain, "DROP"]
        try:
            out = run(argv)
        except LoadError as e:
            errors.append(str(e))
            continue
        if out.returncode != 0:
            errors.append(f"{' '.join(argv)}: {out.stderr.strip()}")
    if errors:
        raise LoadError("; ".join(errors))
