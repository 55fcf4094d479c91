"""The command line: vpn-firewall [--config-dir DIR] {start,reload,check,show,status,unload}."""

import argparse
import contextlib
import os
import sys
from typing import NamedTuple

from .errors import ConfigError, LoadError

LEVELS = {"error": 3, "warning": 4, "notice": 5, "info": 6}
DEFAULT_CONFIG_DIR = "/etc/vpn-firewall"
REFUSED, CONFIG_ERROR = 1, 3

EPILOG = """\
exit status:
  0  done: the rules are loaded and verified (check: the config is valid;
     status: loaded and the same as the config compiles to)
  1  refused (unload without --force); status: loaded, but not the config's rules;
     leak-test: something can leave outside the tunnel
  2  usage error
  3  the config is invalid (check, show); status: nothing of ours is loaded
  4  start/reload failed: the rules loaded before stay in force
  5  start/reload failed: the lockdown ruleset is loaded (all but loopback dropped)
  6  start/reload failed and even the lockdown could not be loaded
"""


def say(level: str, message: str) -> None:
    """One line to stderr; under systemd with a priority prefix the journal understands."""
    if os.environ.get("JOURNAL_STREAM"):
        sys.stderr.write(f"<{LEVELS[level]}>{message}\n")
    else:
        sys.stderr.write(f"vpn-firewall: {level}: {message}\n")


class Compiled(NamedTuple):
    ruleset: dict  # family -> rules
    settings: object


def compile_config(config_dir: str, quiet: bool = False) -> "Compiled":
    """The config's ruleset and settings, or ConfigError; warnings are said on the way."""
    from . import policy
    from .compiler import Compiler
    from .config import read_config
    from .settings import read_settings, unused_warnings
    from .values import Services, services_path

    from .pinned import pin

    config = read_config(config_dir)
    settings = read_settings(config.variables)
    pinned = pin(settings, say if not quiet else (lambda level, message: None))
    user_rules = Compiler(config.variables, Services(services_path())).compile(config.statements)
    for warning in [] if quiet else unused_warnings(config.variables):
        sys.stderr.write(warning + "\n")
    if not settings.vpn_servers and not quiet:
        say("notice", "$VPN_SERVERS is empty: nothing but LAN/DHCP can leave outside the tunnel, "
                      "so no VPN client can connect; set it in " + os.path.join(config_dir, "30_user.conf"))
    return Compiled(policy.build(pinned, user_rules), settings)


@contextlib.contextmanager
def rules_lock():
    """One vpn-firewall at a time changes the rules (a restart and a reload may overlap)."""
    import fcntl

    path = os.environ.get("VPN_FIREWALL_LOCK", "/run/vpn-firewall.lock")
    try:
        handle = open(path, "a")
    except OSError as e:
        say("warning", f"cannot open the lock file {path}: {e.strerror}; going on without it")
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def compiled_or_say(config_dir: str):
    """The config's ruleset, or None after printing why not (check and show)."""
    try:
        return compile_config(config_dir).ruleset
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def cmd_start(args) -> int:
    from . import load

    with rules_lock():
        code = load.apply(lambda: compile_config(args.config_dir).ruleset, say)
    if code == load.OK:
        say("info", f"rules loaded and verified ({', '.join(load.families())})")
    return code


def cmd_refresh(args) -> int:
    """Resolve and pin the host names in $VPN_SERVERS, then load the rules with them."""
    from . import load
    from .pinned import refresh

    try:
        settings = compile_config(args.config_dir, quiet=True).settings
    except ConfigError as e:
        print(e, file=sys.stderr)
        return CONFIG_ERROR
    with rules_lock():
        resolved = refresh(settings, say)
        code = load.apply(lambda: compile_config(args.config_dir).ruleset, say)
    return code or resolved


def cmd_check(args) -> int:
    from . import kernel
    from .render import render_load

    ruleset = compiled_or_say(args.config_dir)
    if ruleset is None:
        return CONFIG_ERROR
    if os.geteuid() == 0:
        try:
            for family in ruleset:
                kernel.restore(family, render_load(ruleset[family], {}), test=True)
        except LoadError as e:
            say("error", str(e))
            return CONFIG_ERROR
        tested = "; iptables-restore --test accepts it"
    else:
        tested = " (not root: iptables-restore --test skipped)"
    counts = ", ".join(f"{len(rules)} {family} rules" for family, rules in ruleset.items())
    print(f"configuration OK: {counts}{tested}")
    return 0


def cmd_show(args) -> int:
    from .render import render_load

    ruleset = compiled_or_say(args.config_dir)
    if ruleset is None:
        return CONFIG_ERROR
    out = []
    for family, rules in ruleset.items():
        tool = "iptables" if family == "ip" else "ip6tables"
        out.append(f"# {family}: {tool}-restore --noflush\n")
        out.append(render_load(rules, {}))
    sys.stdout.write("".join(out))
    return 0


def cmd_is_configured(args) -> int:
    """For the package's postinst: is there anything to connect to yet?"""
    try:
        compiled = compile_config(args.config_dir, quiet=True)
    except ConfigError:
        return REFUSED
    return 0 if compiled.settings.vpn_servers else REFUSED


def cmd_status(args) -> int:
    from .status import status

    return status(args.config_dir, lambda: compile_config(args.config_dir, quiet=True), args.json)


def cmd_ensure_closed(args) -> int:
    """The unit's ExecStopPost: a start that was killed before it loaded anything leaves
    the kernel's open defaults; close each family that holds nothing of ours. Never opens."""
    from . import load

    if os.environ.get("SERVICE_RESULT", "") == "success":
        return load.OK
    with rules_lock():
        return load.close_unloaded(say)


def cmd_leak_test(args) -> int:
    from .leaktest import leak_test
    from .load import families

    try:
        patterns = list(compile_config(args.config_dir, quiet=True).settings.vpn_interfaces)
    except ConfigError as e:
        say("warning", f"{e}; assuming the default VPN interfaces")
        patterns = ["tun+", "wg+"]
    return leak_test(patterns, families())


def cmd_unload(args) -> int:
    from . import load

    if not args.force:
        say("error", "unload opens this machine's network: traffic would leave outside the VPN. "
                     "Run 'vpn-firewall unload --force' if that is what you want.")
        return REFUSED
    say("warning", "unloading vpn-firewall: from now on traffic is NOT protected by the kill switch")
    with rules_lock():
        return load.unload(say)


def parser() -> argparse.ArgumentParser:
    from . import VERSION

    p = argparse.ArgumentParser(
        prog="vpn-firewall",
        description="A VPN kill switch: nothing leaves this machine but through the VPN tunnel "
                    "or to the VPN servers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    p.add_argument("--config-dir", default=os.environ.get("VPN_FIREWALL_CONFIG_DIR", DEFAULT_CONFIG_DIR),
                   help="read *.conf from DIR (default: %(default)s)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("start", help="compile the config and load it (at boot: lockdown first)").set_defaults(func=cmd_start)
    sub.add_parser("reload", help="the same as start: the old rules stay if the new config fails").set_defaults(func=cmd_start)
    sub.add_parser("refresh", help="resolve the host names in $VPN_SERVERS (DNS opened narrowly for it), "
                   "pin their addresses, reload").set_defaults(func=cmd_refresh)
    sub.add_parser("check", help="validate the config and the ruleset; the kernel is not touched").set_defaults(func=cmd_check)
    sub.add_parser("show", help="print the iptables-restore input of both families (dry run)").set_defaults(func=cmd_show)
    sub.add_parser("is-configured", help="exit 0 if the config is valid and names a VPN server, else 1"
                   ).set_defaults(func=cmd_is_configured)
    st = sub.add_parser("status", help="what is loaded, whether it matches the config, what was blocked")
    st.add_argument("--json", action="store_true", help="the same facts as JSON, for scripts")
    st.set_defaults(func=cmd_status)
    sub.add_parser("ensure-closed", help="load the lockdown where nothing of ours is loaded (the unit's "
                   "ExecStopPost after a failed start); never opens").set_defaults(func=cmd_ensure_closed)
    sub.add_parser("leak-test", help="try to send outside the tunnel on every interface; exit 0 only if "
                   "nothing can leave").set_defaults(func=cmd_leak_test)
    un = sub.add_parser("unload", help="remove the kill switch and OPEN the network (needs --force)")
    un.add_argument("--force", action="store_true", help="yes, open this machine's network")
    un.set_defaults(func=cmd_unload)
    return p


def main(argv=None) -> int:
    import gc

    # A short-lived process that builds many small acyclic objects: the cycle collector's
    # passes over them grow with the endpoint count and find nothing.
    gc.disable()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
