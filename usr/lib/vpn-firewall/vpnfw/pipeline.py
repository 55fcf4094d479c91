"""The pipeline that turns /etc/vpn-firewall into rules: read the files, take the settings,
add the servers the VPN clients' own configs name, put in the pinned addresses, compile the
rules, build the policy. Every command that needs the config's rules comes here.

    config (read, merge) -> parser -> settings, clientconfigs, pinned -> compiler -> policy

What the compile reads goes through inputs.py; start's compile is taken from the cache when
nothing it read has changed (StartCompile).
"""

import os
from collections import namedtuple

# ruleset: family -> rules
# settings: the settings as written (host names not yet replaced by their pinned addresses)
# resolving: the host names @resolve asked for
# said: (kind, text) of every warning and notice of the compile, told or not; kind "raw" is
#       a config warning with its own place, else a level ("warning", "notice")
# servers: how many VPN server endpoints have an address (host names pinned)
Compiled = namedtuple("Compiled", "ruleset settings resolving said servers")


def compile_config(config_dir: str, tell=None) -> Compiled:
    """The config's ruleset and settings, or ConfigError. tell(kind, text): each warning as it
    comes (None: only kept, in .said)."""
    from . import policy
    from .compiler import Compiler
    from .config import read_config
    from .pinned import pin
    from .portal import read_session
    from .settings import check_misspelt, read_settings, unused_warnings
    from .state import services_path
    from .values import Services

    said = []

    def told(kind, text):
        said.append((kind, text))
        if tell is not None:
            tell(kind, text)
    config = read_config(config_dir)
    settings = read_settings(config.variables)
    if settings.vpn_client_configs:
        from .clientconfigs import endpoints

        found = endpoints(settings.vpn_client_configs, config.variables.warnings.append)
        settings = settings._replace(vpn_servers=settings.vpn_servers + found.endpoints)
        if found.wireguard and (settings.vpn_users or settings.vpn_groups) and settings.vpn_fwmark is None:
            told("warning", "$VPN_USER/$VPN_GROUP and a WireGuard tunnel in $VPN_CLIENT_CONFIGS: the kernel's "
                            "WireGuard sends from a socket no process owns, so only these users' packets would "
                            "reach its server and the tunnel could not connect; set $VPN_FWMARK to the tunnel's "
                            "fwmark (wg-quick: 51820), which only root can set")
    pinned = pin(settings, told)
    compiler = Compiler(config.variables, Services(services_path()))
    user_rules = compiler.compile(config.statements)
    check_misspelt(config.variables)
    for warning in compiler.warnings + unused_warnings(config.variables):
        told("raw", warning)
    if not pinned.vpn_servers:
        told("warning", no_server_reachable(settings, config_dir))
    from .exclusion import read_sessions

    return Compiled(policy.build(pinned, user_rules, read_session(), read_sessions()), settings,
                    tuple(sorted(config.variables.resolving)), tuple(said), len(pinned.vpn_servers))


def no_server_reachable(settings, config_dir: str) -> str:
    if settings.vpn_servers:  # all of them host names never resolved
        return ("no VPN server can be reached: the host names in $VPN_SERVERS have never been resolved; "
                "run 'vpn-firewall refresh'")
    return ("no VPN server can be reached: $VPN_SERVERS is empty, so nothing but LAN/DHCP can leave outside "
            "the tunnel and no VPN client can connect; set it in " + os.path.join(config_dir, "30_user.conf"))


class StartCompile:
    """start's and reload's ruleset: the cache's when nothing the last compile read has
    changed (its warnings told again), else compiled now, with the record of what it read
    for store() to keep once the rules are loaded and verified."""

    def __init__(self, config_dir: str, tell):
        from . import cache, inputs

        self.config_dir = config_dir
        hit = cache.load(config_dir)
        if hit is not None:
            self.ruleset, said = hit
            self.from_cache, self.record, self.said = True, None, said
            for kind, text in said:
                tell(kind, text)
            return
        self.from_cache = False
        inputs.start()
        try:
            compiled = compile_config(config_dir, tell)
        finally:
            self.record = inputs.stop()
        self.ruleset, self.said = compiled.ruleset, compiled.said

    def store(self) -> bool:
        """After a verified load: the cache holds this compile for the next start; whether
        it does (taken from it, or kept now)."""
        from . import cache

        return self.from_cache or cache.store(self.config_dir, self.record, self.ruleset, self.said)

    def still_current(self) -> bool:
        """Nothing it read has changed since (the cache, which holds it, still matches)."""
        from . import cache

        return cache.load(self.config_dir) is not None
