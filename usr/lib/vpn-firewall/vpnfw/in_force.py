"""The ruleset in force, per family, kept in /run: what the guard puts back, never recompiled.

Kept in the printed form (table, chain, line per rule): all that loading and verifying need.

Written by whatever changes what is in force (start, reload, refresh, the lockdown) while
it holds the rules lock, and read by the guard under the same lock. marshal: the rules are
tuples of strings, and it costs nothing to import on the boot path; the file lives in
/run, so it is never read by another Python than the one that wrote it.
"""

import marshal
import os

from . import state
from .model import Printed
from .render import to_printed


def _path() -> str:
    return state.in_run_dir("ruleset")


def read():
    """family -> [Rule], or None when nothing was recorded (or the file cannot be read)."""
    try:
        with open(_path(), "rb") as f:
            data = marshal.load(f)
        return {family: [Printed(*fields) for fields in rules] for family, rules in data.items()}
    except (OSError, EOFError, ValueError, TypeError):
        return None


def stamp():
    """Changes whenever the file is replaced: the guard re-reads it then."""
    try:
        st = os.stat(_path())
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def record(changed: dict) -> None:
    """Record family -> rules (Rule or Printed) as now in force; the other families stay as
    recorded. OSError when it cannot be written."""
    ruleset = (read() or {}) if stamp() is not None else {}  # nothing to read: no read
    ruleset.update(changed)
    _write(ruleset)


def _write(ruleset: dict) -> None:
    state.write_atomic(_path(), marshal.dumps(
        {family: [tuple(r) for r in to_printed(rules)] for family, rules in ruleset.items()}))


def forget(family: str) -> None:
    """Nothing of ours is in force in this family any more (unload)."""
    ruleset = read()
    if ruleset is None or family not in ruleset:
        return
    del ruleset[family]
    try:
        if ruleset:
            _write(ruleset)
        else:
            os.unlink(_path())
    except OSError:
        pass
