"""Where vpn-firewall keeps what it knows between runs, and how it writes it.

Every path the loader reads or writes outside its configuration is named here, each one
movable by an environment variable (for tests, documented in vpn-firewall(8)); every state
file is written whole or not at all (a temporary file beside it, then a rename).
"""

import os


def run_dir() -> str:
    """What is true until the next boot: the rules in force, the guard's account, a portal session."""
    return os.environ.get("VPN_FIREWALL_RUN_DIR", "/run/vpn-firewall")


def state_dir() -> str:
    """What outlives a boot: the verified compile, the pinned addresses."""
    return os.environ.get("VPN_FIREWALL_STATE_DIR", "/var/lib/vpn-firewall")


def lock_path() -> str:
    return os.environ.get("VPN_FIREWALL_LOCK", "/run/vpn-firewall.lock")


def resolv_conf() -> str:
    return os.environ.get("VPN_FIREWALL_RESOLV_CONF", "/etc/resolv.conf")


def services_path() -> str:
    return os.environ.get("VPN_FIREWALL_SERVICES", "/etc/services")


def proc_dir() -> str:
    return os.environ.get("VPN_FIREWALL_PROC", "/proc")


def kern_log():
    """A file read instead of the journal for `status`'s recently blocked packets, or None."""
    return os.environ.get("VPN_FIREWALL_KERN_LOG")


def in_run_dir(name: str) -> str:
    return os.path.join(run_dir(), name)


def in_state_dir(name: str) -> str:
    return os.path.join(state_dir(), name)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """The file holds `data` whole, or what it held before: OSError when it cannot be written."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
