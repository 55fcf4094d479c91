"""A verified cache of the compiled ruleset: an unchanged config is not compiled again at boot.

After a start that loaded and verified its rules, the ruleset is kept in
/var/lib/vpn-firewall/compiled with every input of the compile that made it: each file it
read (the config files and the directory's listing, included files, VPN client configs, the
pinned addresses, /etc/services), each pattern it expanded, each account name it looked up,
the loader's own code (its files' sizes and times) and the Python that wrote it. The next
start uses it only when every one of them is as it was, compared byte for byte, not by a
hash; anything else, anything unreadable, and the config is compiled as usual. The rules
loaded from it are verified in the kernel like any others.
"""

import marshal
import os
import sys

from . import inputs, state
from .model import Printed
from .render import to_printed

FORMAT = 1


def path() -> str:
    return state.in_state_dir("compiled")


def _code_stamp() -> list:
    """The loader's own files, by size and time: an upgrade or an edit makes a new compile."""
    here = os.path.dirname(os.path.abspath(__file__))
    stamp = []
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            st = os.stat(os.path.join(here, name))
            stamp.append((name, st.st_size, st.st_mtime_ns))
    return stamp


def _key(config_dir: str) -> tuple:
    """What must match besides the inputs (which name every file by its path)."""
    return (FORMAT, sys.version, os.path.abspath(config_dir), _code_stamp())


def load(config_dir: str):
    """(ruleset of Printed rules, warnings) when the cache holds this config's compile, else None."""
    if os.path.exists(state.in_run_dir("portal.json")):
        return None  # a portal session, or what a killed one left: the compile must look at it
    try:
        with open(path(), "rb") as f:
            data = marshal.load(f)
        if data["key"] != _key(config_dir):
            return None
        if not all(inputs.same(entry) for entry in data["inputs"]):
            return None
        ruleset = {family: [Printed(*fields) for fields in rules] for family, rules in data["ruleset"].items()}
        return ruleset, data["warnings"]
    except Exception:  # any doubt: compile
        return None


def store(config_dir: str, record, ruleset, warnings) -> bool:
    """Keep a compile that was loaded and verified, with the record of what it read
    (inputs.stop()); whether it is kept (a cache that cannot be written is no loss)."""
    if record is None or any(entry[0] == "never" for entry in record):
        return False
    data = {"key": _key(config_dir), "inputs": record,
            "ruleset": {family: [tuple(rule) for rule in to_printed(rules)] for family, rules in ruleset.items()},
            "warnings": list(warnings)}
    try:
        state.write_atomic(path(), marshal.dumps(data), mode=0o600)
    except (OSError, ValueError):
        return False
    return True

