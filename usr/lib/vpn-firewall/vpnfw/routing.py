"""A way around the tunnel for what an exclusion marks (exclusion.py): policy routing by the
packet's mark, both families.

A VPN client takes the traffic by routes (OpenVPN's 0.0.0.0/1 and 128.0.0.0/1, IPv6's
2000::/4 and the like, NetworkManager's default route by metric) or by rules of its own
(wg-quick's table 51820 for every packet without its fwmark). A marked packet is looked up
in TABLE first (rule PRIORITY: before wg-quick's and the main table's), which holds the main
table's routes without those by a tunnel interface: the way it would go with the VPN down.
The table follows the main table while exclusions run (sync, once a second). Uses `ip`
(iproute2): the one runtime dependency besides python3 and iptables, for this alone.
"""

import os

from .model import EXCLUDED_BIT

TABLE = PRIORITY = 5650
FAMILIES = ("-4", "-6")
# what `ip route show` prints that `ip route add` does not take (flags, and expiry with its value)
NOT_FOR_ADD = {"linkdown", "dead", "offload", "trap", "rt_offload", "rt_trap", "rt_offload_failed"}


class RoutingError(Exception):
    """The routing around the tunnel cannot be set: the reason, for the user."""


def _ip(*args, check=True) -> str:
    import subprocess  # not on a start's path that needs no routes (it imports re)

    try:
        out = subprocess.run(["ip", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise RoutingError("'ip' (package iproute2) is not installed: an exclusion needs it to route "
                           "around the tunnel") from None
    if check and out.returncode != 0:
        raise RoutingError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _routes(text: str) -> list:
    """`ip route show` output as whole routes (a multipath route's nexthop lines joined)."""
    routes = []
    for line in text.splitlines():
        if line[:1].isspace() and routes:
            routes[-1] += " " + line.strip()
        elif line.strip():
            routes.append(line.strip())
    return routes


def _addable(route: str) -> list:
    words, out, skip = route.split(), [], False
    for word in words:
        if skip:
            skip = False
        elif word == "expires":
            skip = True
        elif word not in NOT_FOR_ADD:
            out.append(word)
    return out


def _by_tunnel(route: str, tunnels) -> bool:
    words = route.split()
    devices = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "dev"]
    return any(_matches(dev, t) for dev in devices for t in tunnels)


def _matches(device: str, pattern: str) -> bool:
    return device.startswith(pattern[:-1]) if pattern.endswith("+") else device == pattern


def wanted(family: str, tunnels) -> list:
    """The main table's routes of a family without the tunnel's, as `ip route add` takes them."""
    return [" ".join(_addable(r)) for r in _routes(_ip(family, "route", "show", "table", "main"))
            if not _by_tunnel(r, tunnels)]


def _marker() -> str:
    from .state import in_run_dir

    return in_run_dir("routed")


def sync(tunnels) -> None:
    """The rule in place and the table as the main table is now, without the tunnel's routes
    (a marker in /run says they are set, so that a later load takes them out)."""
    from .state import write_atomic

    if not os.path.exists(_marker()):
        write_atomic(_marker(), b"")
    mark = f"0x{EXCLUDED_BIT:x}/0x{EXCLUDED_BIT:x}"
    for family in FAMILIES:
        if not _ip(family, "rule", "show", "priority", str(PRIORITY)).strip():
            _ip(family, "rule", "add", "fwmark", mark, "lookup", str(TABLE), "priority", str(PRIORITY))
        want = wanted(family, tunnels)
        # a table that does not exist yet reads as empty
        have = [" ".join(_addable(r)) for r in _routes(_ip(family, "route", "show", "table", str(TABLE), check=False))]
        if sorted(want) == sorted(have):
            continue
        _ip(family, "route", "flush", "table", str(TABLE), check=False)
        for route in want:
            # one the kernel refuses (a route through a gateway not yet reachable) is left out
            _ip(family, "route", "add", *route.split(), "table", str(TABLE), check=False)


def remove() -> None:
    """The rule and the table gone (nothing marks packets for them)."""
    try:
        os.unlink(_marker())
    except FileNotFoundError:
        pass
    for family in FAMILIES:
        try:
            for _ in range(8):  # one each time; more if killed sessions added them side by side
                if not _ip(family, "rule", "show", "priority", str(PRIORITY), check=False).strip():
                    break
                _ip(family, "rule", "del", "priority", str(PRIORITY), check=False)
            _ip(family, "route", "flush", "table", str(TABLE), check=False)
        except RoutingError:
            return


def marks_in(ruleset) -> bool:
    """Whether rules (family -> Rule or Printed) mark packets to go around the tunnel: an
    exclusion's or a bypass unit's chain in mangle."""
    return any(r.table == "mangle" and r.chain.startswith(("EXCLUDE-", "BYPASS-"))
               for rules in ruleset.values() for r in rules)


def tunnels_of(config_dir: str) -> tuple:
    """$VPN_INTERFACES as the config on disk sets it (the routes by them stay out of TABLE)."""
    from .config import read_config
    from .settings import read_settings

    return read_settings(read_config(config_dir).variables).vpn_interfaces


def settle(ruleset, tunnels) -> None:
    """The routes around the tunnel in step when the rules (family -> Rule or Printed) mark
    packets for them, gone when nothing does."""
    if marks_in(ruleset):
        sync(tunnels)
    else:
        remove()


def keep(ruleset, config_dir: str, say) -> None:
    """settle() after a load, the tunnels as the config names them; said, never raised (the
    rules are in force either way; marked packets without the routes go nowhere)."""
    try:
        settle(ruleset, tunnels_of(config_dir))
    except Exception as e:  # noqa: BLE001  a config unreadable now, no `ip`
        say("warning", f"the routes around the tunnel (for $BYPASS_UNITS and exclusions) are not set: {e}")
