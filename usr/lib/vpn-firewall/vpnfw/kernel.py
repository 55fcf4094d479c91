"""Talking to the kernel through iptables' own tools: save, restore, and what they tell.

Binaries are found on PATH, so a test can put a stand-in first; /proc is found under
VPN_FIREWALL_PROC for the same reason.
"""

import os
import shutil
import subprocess
from typing import NamedTuple

from .errors import LoadError
from .model import BUILTIN_CHAINS, CHAIN_PREFIX, our_chain
from .render import TableState
from .values import IP

TOOL_PREFIX = {"ip": "iptables", "ip6": "ip6tables"}
WAIT = ("-w", "10")  # wait for the xtables lock rather than fail at boot beside another tool


class Dump(NamedTuple):
    """iptables-save of one family: table -> (policies {chain: policy}, rules {chain: [line]})."""

    tables: dict
    counters: dict  # (table, chain) -> [(packets, bytes) per rule], when read with -c


def proc_dir() -> str:
    return os.environ.get("VPN_FIREWALL_PROC", "/proc")


def ipv6_available() -> bool:
    """False when the kernel has no IPv6 at all (ipv6.disable=1): then ip6tables has nothing to guard."""
    return os.path.exists(os.path.join(proc_dir(), "net", "if_inet6"))


def tool(family: str, suffix: str = "") -> str:
    return TOOL_PREFIX[family] + suffix


def run(argv: list, stdin: str = None, timeout: int = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LoadError(f"{argv[0]} not found: is the iptables package installed?") from None
    except subprocess.TimeoutExpired:
        raise LoadError(f"{argv[0]} did not finish within {timeout} s") from None


def backend() -> str:
    """'nft' or 'legacy': which one 'iptables' is, told by where its link points."""
    path = shutil.which("iptables-restore")
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
    for family in (IP, "ip6"):
        if primary == "nft":
            names = os.path.join(proc_dir(), "net", "ip_tables_names" if family == IP else "ip6_tables_names")
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
        if shutil.which(other) is None:
            continue
        out = run([other])
        if out.returncode == 0 and any(line.startswith("-A ") for line in out.stdout.splitlines()):
            found.append(family)
    return found


def save(family: str, counters: bool = False) -> Dump:
    argv = [tool(family, "-save")] + (["-c"] if counters else [])
    out = run(argv)
    if out.returncode != 0:
        raise LoadError(f"{argv[0]} failed: {out.stderr.strip() or 'exit ' + str(out.returncode)}")
    return parse_save(out.stdout)


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
    for table, builtins in BUILTIN_CHAINS.items():
        policies, rules = dump.tables.get(table, ({}, {}))
        ours = frozenset(c for c in policies if c.startswith(CHAIN_PREFIX))
        jumps = {}
        for c in builtins:
            jump = f"-A {c} -j {our_chain(c)}"
            n = sum(1 for line in rules.get(c, ()) if line == jump)
            if n:
                jumps[c] = n
        states[table] = TableState(jumps, ours)
    return states


def is_loaded(dump: Dump) -> bool:
    return our_chain("OUTPUT") in dump.tables.get("filter", ({}, {}))[0]


def restore(family: str, text: str, test: bool = False) -> None:
    argv = [tool(family, "-restore"), "--noflush", *WAIT] + (["--test"] if test else [])
    out = run(argv, stdin=text)
    if out.returncode != 0:
        what = "refused the ruleset (test)" if test else "failed"
        raise LoadError(f"{argv[0]} {what}: {out.stderr.strip() or 'exit ' + str(out.returncode)}")


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
