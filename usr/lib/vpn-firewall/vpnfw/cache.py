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

from .model import Printed
from .render import printed_form

FORMAT = 1

# What the compile running now read: None when nobody records (every command but start).
_inputs = None


def state_dir() -> str:
    return os.environ.get("VPN_FIREWALL_STATE_DIR", "/var/lib/vpn-firewall")


def path() -> str:
    return os.path.join(state_dir(), "compiled")


# -- recording what a compile reads ---------------------------------------------------------
def record() -> None:
    global _inputs
    _inputs = []


def stop() -> list:
    global _inputs
    inputs, _inputs = _inputs, None
    return inputs


def note_file(file_path: str, data) -> None:
    """A file the compile read (data: its bytes, or None when it was not there)."""
    if _inputs is not None:
        _inputs.append(("file", file_path, data))


def note_owner(file_path: str, st) -> None:
    """Who owns a file and its mode: the trust the config was read with must still hold."""
    if _inputs is not None:
        _inputs.append(("owner", file_path, (st.st_uid, st.st_mode)))


def note_listing(directory: str, names) -> None:
    if _inputs is not None:
        _inputs.append(("listing", directory, sorted(names)))


def note_glob(pattern: str, found) -> None:
    if _inputs is not None:
        _inputs.append(("glob", pattern, list(found)))


def note_account(kind: str, name: str, number: str) -> None:
    if _inputs is not None:
        _inputs.append(("account", kind, name, number))


def uncacheable() -> None:
    """This compile depends on something of the moment (a portal session): keep none of it."""
    global _inputs
    if _inputs is not None:
        _inputs.append(("never",))


# -- checking them again ---------------------------------------------------------------
def _read(file_path: str):
    try:
        with open(file_path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _same(entry) -> bool:
    kind = entry[0]
    if kind == "file":
        return _read(entry[1]) == entry[2]
    if kind == "owner":
        try:
            st = os.stat(entry[1])
        except OSError:
            return False
        return (st.st_uid, st.st_mode) == entry[2]
    if kind == "listing":
        try:
            return sorted(os.listdir(entry[1])) == entry[2]
        except OSError:
            return False
    if kind == "glob":
        import glob

        return sorted(glob.glob(entry[1])) == entry[2]
    if kind == "account":
        from . import values

        try:
            return values.account_number(entry[1], entry[2]) == entry[3]
        except (KeyError, ValueError):
            return False
    return False


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
    from .held import run_dir

    if os.path.exists(os.path.join(run_dir(), "portal.json")):
        return None  # a portal session, or what a killed one left: the compile must look at it
    try:
        with open(path(), "rb") as f:
            data = marshal.load(f)
        if data["key"] != _key(config_dir):
            return None
        if not all(_same(entry) for entry in data["inputs"]):
            return None
        ruleset = {family: [Printed(*fields) for fields in rules] for family, rules in data["ruleset"].items()}
        return ruleset, data["warnings"]
    except Exception:  # any doubt: compile
        return None


def store(config_dir: str, inputs, ruleset, warnings) -> None:
    """Keep a compile that was loaded and verified; a cache that cannot be written is no loss."""
    if inputs is None or any(entry[0] == "never" for entry in inputs):
        return
    data = {"key": _key(config_dir), "inputs": inputs,
            "ruleset": {family: [tuple(rule) for rule in printed_form(rules)] for family, rules in ruleset.items()},
            "warnings": list(warnings)}
    try:
        os.makedirs(state_dir(), mode=0o755, exist_ok=True)
        tmp = path() + ".tmp"
        with open(tmp, "wb") as f:
            marshal.dump(data, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path())
    except (OSError, ValueError):
        pass

