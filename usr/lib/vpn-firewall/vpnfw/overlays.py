"""$OVERLAYS: mesh overlays beside the VPN (Tailscale and Headscale, Nebula, ZeroTier). Two
things each: its interface carries its own traffic (to and from its address ranges, when it
has fixed ones), as the tunnel's does; and its daemon's underlay traffic (the encrypted UDP
to other nodes and relays) may leave outside the tunnel, by the daemon's unit, the way a
$BYPASS_UNITS unit's does (bypass.py). Everything else keeps the kill switch's rules: with
the VPN down, the overlay still works and nothing else leaves.

A preset is what the overlay's own documentation gives; $OVERLAY_INTERFACES, $OVERLAY_NETS
and $OVERLAY_UNITS add the generic form (any other overlay, or other names).
"""

from collections import namedtuple

from . import values as V

Overlay = namedtuple("Overlay", "interfaces nets units")

PRESETS = {
    # tailscale0; the CGNAT range and the ULA prefix Tailscale assigns from (MagicDNS answers
    # at 100.100.100.100, inside it); Headscale's clients are Tailscale's
    "tailscale": Overlay(("tailscale0",), ("100.64.0.0/10", "fd7a:115c:a1e0::/48"), ("tailscaled.service",)),
    # Debian runs one nebula@NAME.service per /etc/nebula/NAME.yml; its default device nebula1;
    # the overlay's network is the user's own (its certificates), so any address on the device
    "nebula": Overlay(("nebula1",), (), ("nebula@*.service", "nebula.service")),
    # zt + the network id's hash; networks are the user's own
    "zerotier": Overlay(("zt+",), (), ("zerotier-one.service",)),
}
PRESETS["headscale"] = PRESETS["tailscale"]


def preset(atom) -> str:
    name = atom.text.lower()
    if name not in PRESETS:
        from .errors import ConfigError

        raise ConfigError(atom.pos, f"expected an overlay: {', '.join(sorted(PRESETS))} (or the generic form: "
                                    f"$OVERLAY_INTERFACES, $OVERLAY_NETS, $OVERLAY_UNITS), got {atom.text!r}")
    return name


def of(settings) -> list:
    """Each overlay as an Overlay of interfaces, nets ((family, net)) and units: the presets'
    and the generic form's (one more, when it names anything)."""
    found = []
    for name in settings.overlays:
        p = PRESETS[name]
        found.append(Overlay(p.interfaces, tuple((V.family_of(n), n) for n in p.nets), p.units))
    if settings.overlay_interfaces or settings.overlay_nets or settings.overlay_units:
        found.append(Overlay(tuple(settings.overlay_interfaces), tuple(settings.overlay_nets),
                             tuple(settings.overlay_units)))
    return found


def units(settings) -> list:
    """Every overlay's daemons' units, once each."""
    out = []
    for overlay in of(settings):
        out += [u for u in overlay.units if u not in out]
    return out


def rules(family, chain, settings, rule) -> list:
    """Accepts for the overlays' interfaces in OUTPUT (-o) or INPUT (-i): to and from their
    nets when they have fixed ones, else any address. rule(family, chain, header): a rule."""
    flag, peer = ("-o", "-d") if chain == "OUTPUT" else ("-i", "-s")
    out = []
    for overlay in of(settings):
        nets = [n for fam, n in overlay.nets if fam == family]
        for iface in overlay.interfaces:
            if nets:
                # in the order iptables-save prints them: -s/-d before -i/-o
                out += [rule(family, chain, ((False, peer, n), (False, flag, iface))) for n in nets]
            elif not overlay.nets:  # no fixed nets: any address on it
                out.append(rule(family, chain, ((False, flag, iface),)))
    return out
