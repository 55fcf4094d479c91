"""The declarative settings: @def variables with reserved names, checked by type.

The defaults here are the ones 10_default.conf documents; a test keeps the two equal.
"""

from collections import namedtuple

from . import values as V
from .errors import ConfigError

DEFAULT_LAN_NETS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                    "fc00::/7", "fe80::/10")


class Settings(namedtuple("Settings", [
    "vpn_servers",  # of values.Endpoint
    "vpn_interfaces",  # of interface names
    "vpn_users",  # of uids, as numbers: only their sockets may reach the servers (empty: anyone's)
    "vpn_groups",  # of gids, the same for groups
    "vpn_fwmark",  # a packet mark (int) that may reach the servers too, or None: sockets no process owns
    "allow_lan",
    "lan_nets",  # of (family, net)
    "allow_dhcp",
    "dns_servers",  # of (family, net); None: DNS through the tunnel to anyone
    "allow_incoming_vpn",
    "log_blocked",
    "gateway_interfaces",  # internal interfaces whose clients are routed through the tunnel
    "gateway_masquerade",
    "gateway_masquerade6",
    "vpn_client_configs",  # of Atoms: quoted shell patterns of VPN clients' config files
    "bypass_units",  # of unit names or cgroup paths whose processes may leave outside the tunnel
    "vpn_units",  # of unit names, template patterns or cgroup paths: only their processes reach the servers
    "overlays",  # of preset names (overlays.py)
    "overlay_interfaces",  # the generic form: more overlay interfaces,
    "overlay_nets",  # their address ranges ((family, net); none: any address on them),
    "overlay_units",  # and their daemons' units (underlay outside the tunnel)
    "trusted_lans",  # of (interface, gateway MAC or None): the LAN only on these networks (trust.py)
])):
    __slots__ = ()


def _list(name, atoms, parse):
    return tuple(parse(a) for a in atoms)


def _scalar(name, atoms, parse):
    if not atoms:
        return None
    if len(atoms) > 1:
        raise ConfigError(atoms[1].pos, f"${name} takes one value, not a list")
    return parse(atoms[0])


def _bool(name, atoms, parse):
    if len(atoms) != 1:
        raise ConfigError(atoms[1].pos, f"${name} takes yes or no, not a list")
    return V.boolean(atoms[0])


def _optional_list(name, atoms, parse):
    return _list(name, atoms, parse) if atoms else None


def _overlay(atom):
    from .overlays import preset  # only when a config names one

    return preset(atom)


def _trusted_lan(atom):
    from .trust import entry

    return entry(atom)


# name -> (field, shape, parse, default)
SCHEMA = {
    "VPN_SERVERS": ("vpn_servers", _list, V.endpoint, ()),
    "VPN_INTERFACES": ("vpn_interfaces", _list, V.interface, ("tun+", "wg+")),
    "VPN_USER": ("vpn_users", _list, lambda a: V.account(a, "user"), ()),
    "VPN_GROUP": ("vpn_groups", _list, lambda a: V.account(a, "group"), ()),
    "VPN_FWMARK": ("vpn_fwmark", _scalar, V.fwmark, None),
    "ALLOW_LAN": ("allow_lan", _bool, None, False),
    "LAN_NETS": ("lan_nets", _list, V.address, tuple((V.family_of(n), n) for n in DEFAULT_LAN_NETS)),
    "ALLOW_DHCP": ("allow_dhcp", _bool, None, True),
    "DNS_SERVERS": ("dns_servers", _optional_list, V.address, None),
    "ALLOW_INCOMING_VPN": ("allow_incoming_vpn", _bool, None, False),
    "LOG_BLOCKED": ("log_blocked", _bool, None, True),
    "GATEWAY_INTERFACES": ("gateway_interfaces", _list, V.interface, ()),
    "GATEWAY_MASQUERADE": ("gateway_masquerade", _bool, None, True),
    "GATEWAY_MASQUERADE6": ("gateway_masquerade6", _bool, None, False),
    "VPN_CLIENT_CONFIGS": ("vpn_client_configs", _list, lambda atom: atom, ()),
    "BYPASS_UNITS": ("bypass_units", _list, V.unit, ()),
    "VPN_UNITS": ("vpn_units", _list, V.unit_pattern, ()),
    "OVERLAYS": ("overlays", _list, lambda atom: _overlay(atom), ()),
    "OVERLAY_INTERFACES": ("overlay_interfaces", _list, V.interface, ()),
    "OVERLAY_NETS": ("overlay_nets", _list, V.address, ()),
    "OVERLAY_UNITS": ("overlay_units", _list, V.unit_pattern, ()),
    "TRUSTED_LANS": ("trusted_lans", _list, lambda atom: _trusted_lan(atom), ()),
}


def read_settings(variables) -> Settings:
    fields = {}
    for name, (field, shape, parse, default) in SCHEMA.items():
        if name not in variables.values:
            fields[field] = default
            continue
        value = variables.values[name]
        atoms = list(value) if isinstance(value, list) else [value]
        if shape is _bool and not atoms:
            raise ConfigError(variables.defined_at[name], f"${name} takes yes or no, not an empty list")
        fields[field] = shape(name, atoms, parse)
    settings = Settings(**fields)
    if not settings.vpn_interfaces:
        raise ConfigError(variables.defined_at["VPN_INTERFACES"],
                          "$VPN_INTERFACES is empty: name at least one tunnel interface, such as tun+")
    return settings


def check_misspelt(variables) -> None:
    """A variable never used whose name is all but a setting's ($VPN_SERVER, $ALOW_LAN,
    $allow_lan) is that setting misspelt: left alone, the setting silently keeps its default
    (no VPN server, no LAN), so it is an error."""
    for name, pos in variables.defined_at.items():
        if name in SCHEMA or name in variables.used:
            continue
        import difflib  # only on this rare path: it costs start-up time

        close = difflib.get_close_matches(name.upper(), SCHEMA, n=1, cutoff=0.8)
        if close:
            raise ConfigError(pos, f"${name} is not a setting: did you mean ${close[0]}? (a variable of "
                                   f"your own by that name must be used in a rule)")


def unused_warnings(variables) -> list:
    """Variables defined and never used: most often a misspelt setting."""
    warnings = []
    for name, pos in variables.defined_at.items():
        if name in SCHEMA or name in variables.used:
            continue
        import difflib  # only on this rare path: it costs start-up time
        hint = difflib.get_close_matches(name, SCHEMA, n=1)
        also = f"; did you mean ${hint[0]}?" if hint else ""
        warnings.append(f"{pos}: warning: ${name} is defined but never used{also}")
    return warnings
