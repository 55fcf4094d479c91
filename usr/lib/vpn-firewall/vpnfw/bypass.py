"""$BYPASS_UNITS: systemd units whose processes may leave outside the tunnel whenever they
run, from boot on, by the same means as an exclusion (exclusion.py: the mark, the routes
around the tunnel, masquerade, the accept), matched by the unit's cgroup.

The kernel takes a cgroup match only for a cgroup that exists: a unit's rules are in the
ruleset only while its cgroup is there. Each unit gets a drop-in (see
vpn-firewall-bypass-generator) whose ExecStartPre reloads, inside the unit's new cgroup and
before its main process runs, so that its rules are in before it sends anything; a restart
of the unit gets a new cgroup, and the reload before it a new rule.
"""

import os

from . import inputs

SEARCH_DEPTH = 3  # slices within system.slice a unit may sit in (Slice=)


def cgroup_of(unit: str, root: str):
    """The unit's cgroup, relative to the hierarchy's root, if it exists now; else None."""
    if "/" in unit:  # a path, as given
        return unit if inputs.is_dir(os.path.join(root, unit)) else None
    direct = f"system.slice/{unit}"
    if inputs.is_dir(os.path.join(root, direct)):
        return direct
    return _search(root, "system.slice", unit, SEARCH_DEPTH)


def _search(root, under, unit, depth):
    try:
        slices = sorted(name for name in inputs.listing(os.path.join(root, under)) if name.endswith(".slice"))
    except OSError:
        return None
    for name in slices:
        path = f"{under}/{name}"
        if inputs.is_dir(os.path.join(root, path, unit)):
            return f"{path}/{unit}"
        if depth > 1:
            found = _search(root, path, unit, depth - 1)
            if found:
                return found
    return None


def running(settings, units=None) -> list:
    """(unit, cgroup) of each unit of $BYPASS_UNITS (or of UNITS) whose cgroup exists now;
    a template's pattern (x@*.service) stands for each of its instances that runs."""
    units = settings.bypass_units if units is None else units
    if not units:
        return []
    from .portal import PortalError
    from .portal_run import cgroup2_mount

    try:
        root = cgroup2_mount()
    except PortalError:  # no hierarchy in view now: a compile that must not be kept
        inputs.never()
        return []
    found = []
    for unit in units:
        if "@*." in unit:
            found += _instances(root, unit)
            continue
        cgroup = cgroup_of(unit, root)
        if cgroup is not None:
            found.append((unit, cgroup))
    return found


def _instances(root, pattern):
    """The running instances of a template (x@*.service): its slice's cgroups
    (system.slice/system-x.slice/x@NAME.service, as systemd places them)."""
    prefix, suffix = pattern.split("@*")
    escaped = prefix.replace("-", "\\x2d")  # systemd's escape of a '-' in a slice's name
    slice_dir = f"system.slice/system-{escaped}.slice"
    try:
        names = inputs.listing(os.path.join(root, slice_dir))
    except OSError:
        inputs.is_dir(os.path.join(root, slice_dir))  # recorded absent: the first instance changes it
        return []
    return [(name, f"{slice_dir}/{name}") for name in names if name.startswith(prefix + "@") and name.endswith(suffix)]


def sessions(settings) -> list:
    """The running units of $BYPASS_UNITS and of the overlays' daemons (overlays.py) as
    exclusion.rules takes them: every packet of theirs, their DNS where everyone's goes."""
    units = list(settings.bypass_units)
    if settings.overlays or settings.overlay_units:
        from .overlays import units as overlay_units

        units += [u for u in overlay_units(settings) if u not in units]
    return [{"id": unit, "cgroup": cgroup, "dns": [], "ports": [], "chain": f"BYPASS-{index}",
             "comment": f"vpn-firewall bypass {unit}"}
            for index, (unit, cgroup) in enumerate(running(settings, units), 1)]
