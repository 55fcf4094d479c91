"""Everything a compile reads from the system, read here, and recorded while a record is kept.

Config files and directories (with who may write them), included files, VPN client
configs, the pinned addresses, the services file, a portal session, glob patterns and
account names: each reader in the pipeline goes through these functions, so a compile's
record (start(), then stop()) names every input it depended on. The cache (cache.py) keeps
that record with the rules and takes them again only when every entry is still the same
(same()). A reader that went around this module would make the cache silently stale.

A leaf: it imports nothing of vpn-firewall's, and nothing slow (it is on the boot path).
"""

import os
import stat

_record = None  # the entries of the compile running now; None when nobody records


def start() -> None:
    global _record
    _record = []


def stop() -> list:
    global _record
    entries, _record = _record, None
    return entries


def never() -> None:
    """This compile depends on something of the moment (a portal session): keep none of it."""
    if _record is not None:
        _record.append(("never",))


def _note(entry) -> None:
    if _record is not None:
        _record.append(entry)


def read(path: str) -> bytes:
    """A file's bytes; OSError when it cannot be read (recorded as absent)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        _note(("file", path, None))
        raise
    _note(("file", path, data))
    return data


def read_if_there(path: str):
    """A file's bytes, or None when it is not there or cannot be read."""
    try:
        return read(path)
    except OSError:
        return None


def owner(path: str) -> os.stat_result:
    """Who owns a file or directory and its mode: the trust it was read with must still hold."""
    st = os.stat(path)
    _note(("owner", path, (st.st_uid, st.st_mode)))
    return st


def untrusted(st: os.stat_result):
    """Why a config file or directory with this owner and mode cannot be trusted, or None.
    Root's, or the account running the loader (a user checking a config; only root loads
    rules), and writable by nobody else."""
    if st.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def listing(directory: str) -> list:
    """The names in a directory, sorted; OSError when it cannot be read."""
    names = sorted(os.listdir(directory))
    _note(("listing", directory, names))
    return names


def is_dir(path: str) -> bool:
    """Whether a directory is there now (a unit's cgroup: $BYPASS_UNITS)."""
    there = os.path.isdir(path)
    _note(("dir", path, there))
    return there


def glob(pattern: str) -> list:
    import glob as globbing  # only when a config asks for a pattern

    paths = sorted(globbing.glob(pattern))
    _note(("glob", pattern, paths))
    return paths


def account(kind: str, name: str) -> str:
    """The number of a user or group name (KeyError when there is none)."""
    number = _account_number(kind, name)
    _note(("account", kind, name, number))
    return number


def _account_number(kind: str, name: str) -> str:
    if kind == "user":
        import pwd

        return str(pwd.getpwnam(name).pw_uid)
    import grp

    return str(grp.getgrnam(name).gr_gid)


# -- the same as recorded? ------------------------------------------------------------------
def same(entry) -> bool:
    """Whether one recorded entry reads the same now; anything unreadable or unknown is not."""
    kind = entry[0]
    try:
        if kind == "file":
            with open(entry[1], "rb") as f:
                return f.read() == entry[2]
        if kind == "owner":
            st = os.stat(entry[1])
            return (st.st_uid, st.st_mode) == entry[2]
        if kind == "listing":
            return sorted(os.listdir(entry[1])) == entry[2]
        if kind == "dir":
            return os.path.isdir(entry[1]) == entry[2]
        if kind == "glob":
            import glob as globbing

            return sorted(globbing.glob(entry[1])) == entry[2]
        if kind == "account":
            return _account_number(entry[1], entry[2]) == entry[3]
    except FileNotFoundError:
        return kind == "file" and entry[2] is None
    except (OSError, KeyError, ValueError):
        return False
    return False
