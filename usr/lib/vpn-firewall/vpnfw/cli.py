"""The commands: vpn-firewall [--config-dir DIR] COMMAND; see cmdline for the grammar."""

import os
import sys

from . import cmdline
from .errors import ConfigError, LoadError

from .exits import CONFIG_ERROR, REFUSED, USAGE_ERROR

LEVELS = {"error": 3, "warning": 4, "notice": 5, "info": 6}


def say(level: str, message: str) -> None:
    """One line to stderr; under systemd with a priority prefix the journal understands."""
    if os.environ.get("JOURNAL_STREAM"):
        sys.stderr.write(f"<{LEVELS[level]}>{message}\n")
    else:
        sys.stderr.write(f"vpn-firewall: {level}: {message}\n")


def print_warning(kind: str, text: str) -> None:
    """What a compile says: a config warning as it is ('raw'), anything else through say()."""
    if kind == "raw":
        sys.stderr.write(text + "\n")
    else:
        say(kind, text)


def compile_config(config_dir: str, quiet: bool = False):
    """The pipeline's compile, its warnings said here unless quiet."""
    from .pipeline import compile_config as compiled

    return compiled(config_dir, None if quiet else print_warning)


class RulesLock:
    """One vpn-firewall at a time changes the rules (a restart and a reload may overlap)."""

    def __enter__(self):
        import fcntl

        from .state import lock_path

        path = lock_path()
        try:
            self.handle = open(path, "a")
        except OSError as e:
            say("warning", f"cannot open the lock file {path}: {e.strerror}; going on without it")
            self.handle = None
            return
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()  # closing releases the lock


def compiled_or_say(config_dir: str):
    """The config's ruleset, or None after printing why not (check and show)."""
    try:
        return compile_config(config_dir).ruleset
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


RELOAD_ROUNDS = 3  # a reload whose inputs changed while it ran runs again, this often at most


def cmd_start(args) -> int:
    """start and reload. A reload (the path unit's, after a VPN client's config changed)
    runs again when what it read changed while it ran: a second edit right after the first
    would otherwise wait for the next one (systemd merges a path's trigger into the run)."""
    from . import load
    from .pipeline import StartCompile

    rounds = RELOAD_ROUNDS if args.command == "reload" else 1
    for done in range(1, rounds + 1):
        prepared = []

        def ruleset():  # called by apply, while the kernel's state is read
            prepared.append(StartCompile(args.config_dir, print_warning))
            return prepared[0].ruleset
        with RulesLock():
            code = load.apply(ruleset, say)
        if code != load.OK:
            return code
        from .state import in_run_dir

        if os.path.exists(in_run_dir("portal.json")):  # portal (and its re) off the boot path
            from .portal import forget_ended

            forget_ended()  # a killed session's file, once its time is up: its rules are gone now
        if os.path.exists(in_run_dir("exclusions.json")):
            from .exclusion import forget_ended as forget_ended_exclusions

            forget_ended_exclusions()  # sessions whose command and process are gone: no rules now
        from .routing import keep, marks_in

        if marks_in(prepared[0].ruleset) or os.path.exists(in_run_dir("routed")):
            keep(prepared[0].ruleset, args.config_dir, say)
        cached = prepared[0].from_cache
        say("info", f"rules loaded and verified ({', '.join(load.families())})"
                    + ("; the config is unchanged since it was compiled last (cache)" if cached else ""))
        stored = prepared[0].store()
        if done == rounds or not stored or prepared[0].still_current():
            break
        say("info", "the config changed while it was loaded: loading it again")
    return code


def cmd_refresh(args) -> int:
    """Resolve and pin the host names in $VPN_SERVERS, then load the rules with them."""
    from . import load
    from .pinned import refresh

    try:
        compiled = compile_config(args.config_dir, quiet=True)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return CONFIG_ERROR
    with RulesLock():
        resolved = refresh(compiled.settings, say, compiled.resolving)
        code = load.apply(lambda: compile_config(args.config_dir).ruleset, say)
    return code or resolved


def cmd_check(args) -> int:
    from . import kernel
    from .render import restore_input

    ruleset = compiled_or_say(args.config_dir)
    if ruleset is None:
        return CONFIG_ERROR
    if os.geteuid() == 0:
        try:
            for family in ruleset:
                kernel.restore(family, restore_input(ruleset[family], {}), test=True)
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
    from .render import restore_input

    ruleset = compiled_or_say(args.config_dir)
    if ruleset is None:
        return CONFIG_ERROR
    out = []
    for family, rules in ruleset.items():
        tool = "iptables" if family == "ip" else "ip6tables"
        out.append(f"# {family}: {tool}-restore --noflush\n")
        out.append(restore_input(rules, {}))
    sys.stdout.write("".join(out))
    return 0


def cmd_is_configured(args) -> int:
    """For the package's postinst: is there anything to connect to yet? (as status judges it)"""
    try:
        compiled = compile_config(args.config_dir, quiet=True)
    except ConfigError:
        return REFUSED
    return 0 if compiled.servers else REFUSED


def cmd_status(args) -> int:
    from .status import status

    return status(args.config_dir, lambda: compile_config(args.config_dir, quiet=True), args.json,
                  args.prometheus)


def cmd_ensure_closed(args) -> int:
    """The unit's ExecStopPost: a start that failed or was killed before it loaded anything
    leaves the kernel's open defaults; close each family that holds nothing of ours. A
    broken config has loaded the lockdown already (and that stays); so what is found empty
    here failed for another reason, and gets the last verified rules, if the config is the
    one they were compiled from. Never opens."""
    from . import cache, load

    result = os.environ.get("SERVICE_RESULT", "")
    if result == "success":
        return load.OK
    if result:
        say("warning", f"the start did not finish ({result}: {os.environ.get('EXIT_CODE', '?')} "
                       f"{os.environ.get('EXIT_STATUS', '?')}); closing what it left open")

    def last_verified():
        hit = cache.load(args.config_dir)
        return hit[0] if hit is not None else None
    with RulesLock():
        return load.close_unloaded(say, last_verified)


def cmd_leak_test(args) -> int:
    from .leaktest import leak_test
    from .load import families

    try:
        patterns = list(compile_config(args.config_dir, quiet=True).settings.vpn_interfaces)
    except ConfigError as e:
        say("warning", f"{e}; assuming the default VPN interfaces")
        patterns = ["tun+", "wg+"]
    return leak_test(patterns, families())


def cmd_guard(args) -> int:
    import gc

    from .guard import Guard

    gc.enable()  # main() turned it off for short commands; a daemon that runs for months needs it

    def adopt():
        """No ruleset recorded (loaded by an older version): the config's, if it is what the kernel holds."""
        from . import kernel, load
        from .differences import holes

        try:
            ruleset = compile_config(args.config_dir, quiet=True).ruleset
        except ConfigError:
            return None
        fams = load.families()
        if all(not holes(kernel.save(f), ruleset[f]) for f in fams):
            return {f: ruleset[f] for f in fams}
        return None

    from .routing import tunnels_of

    def trust_entries():
        from .config import read_config
        from .settings import read_settings

        return read_settings(read_config(args.config_dir).variables).trusted_lans

    return Guard(say, RulesLock, adopt, lambda: tunnels_of(args.config_dir), trust_entries).run()


def cmd_unload(args) -> int:
    from . import load
    from .guard import stop_running

    if not args.force:
        say("error", "unload opens this machine's network: traffic would leave outside the VPN. "
                     "Run 'vpn-firewall unload --force' if that is what you want.")
        return REFUSED
    say("warning", "unloading vpn-firewall: from now on traffic is NOT protected by the kill switch")
    stop_running(say)  # first: it would put the rules back
    with RulesLock():
        return load.unload(say)


PORTAL_HOWTO = """\
usage: sudo vpn-firewall portal [--for DURATION] [--dns ADDR] -- COMMAND [ARG...]

Hotel, train and airport Wi-Fi: the login page comes before the VPN can connect. This
lets one program (and its children) reach http and https and the network's own DNS
outside the tunnel, and nothing else, until it exits or the time is up (5 minutes by
default); the rest of the machine stays closed. Start a browser of its own with it, for
example:

  sudo vpn-firewall portal -- firefox --new-instance --profile "$(mktemp -d)" http://neverssl.com
  sudo vpn-firewall portal --for 2m -- chromium --user-data-dir="$(mktemp -d)" http://neverssl.com

(a browser that is already running would take the page over and stay blocked). When the
login is done, close that browser; the VPN client can connect now.
"""


def _runs_a_command(args, howto):
    """portal's and exclude's first checks: the how-to without a command, root; None: go on."""
    if args.run is None:
        sys.stdout.write(howto)
        return USAGE_ERROR
    if os.geteuid() != 0:
        say("error", f"{args.command} changes the firewall: run it as root "
                     f"(sudo vpn-firewall {args.command} -- COMMAND)")
        return REFUSED
    return None


def _resolvers(args) -> list:
    """--dns's address, or the network's resolvers (PortalError for a bad one)."""
    from . import portal

    return [portal.dns_address(args.values["--dns"])] if "--dns" in args.values else portal.lease_resolvers()


def cmd_portal(args) -> int:
    """A captive portal's login, for one program, for a few minutes (see portal.py)."""
    from . import load, portal

    refused = _runs_a_command(args, PORTAL_HOWTO)
    if refused is not None:
        return refused
    try:
        seconds = portal.duration(args.values.get("--for", "5m"))
        dns = _resolvers(args)
    except portal.PortalError as e:
        say("error", str(e))
        return USAGE_ERROR

    def reload():
        with RulesLock():
            return load.apply(lambda: compile_config(args.config_dir, quiet=True).ruleset, say)
    from .portal_run import session

    return session(args.run, seconds, dns, reload, RulesLock, say)


EXCLUDE_HOWTO = """\
usage: sudo vpn-firewall exclude [--ports LIST] [--dns ADDR] -- COMMAND [ARG...]

Runs COMMAND, as you, outside the tunnel: it and the processes it starts may leave by the
physical interfaces (with --ports only to those ports), for as long as any of them runs.
Every other program stays in the tunnel, or blocked when the VPN is down. Its DNS goes to
the network's resolver (or --dns) outside the tunnel; any other DNS of it goes where
everyone's goes. `vpn-firewall status` lists the exclusions that run.

  sudo vpn-firewall exclude -- steam
  sudo vpn-firewall exclude --ports 443 -- firefox --new-instance --profile "$(mktemp -d)"
"""


def cmd_exclude(args) -> int:
    """One program outside the tunnel while it runs (see exclusion.py)."""
    from . import exclusion, load, portal

    refused = _runs_a_command(args, EXCLUDE_HOWTO)
    if refused is not None:
        return refused
    try:
        ports = exclusion.ports(args.values["--ports"]) if "--ports" in args.values else []
        dns = _resolvers(args)
    except (exclusion.ExclusionError, portal.PortalError) as e:
        say("error", str(e))
        return USAGE_ERROR
    try:
        settings = compile_config(args.config_dir, quiet=True).settings
    except ConfigError as e:
        say("error", f"exclude: the config does not compile, nothing was opened: {e}")
        return CONFIG_ERROR

    def reload():
        with RulesLock():
            return load.apply(lambda: compile_config(args.config_dir, quiet=True).ruleset, say)
    from .exclusion_run import session

    return session(args.run, dns, ports, settings.vpn_interfaces, reload, say)


def cmd_monitor(args) -> int:
    """A live view (see monitor.py)."""
    from .monitor import Monitor
    from .routing import tunnels_of

    try:
        patterns = list(tunnels_of(args.config_dir))
    except Exception:  # noqa: BLE001  a broken config: the usual names
        patterns = ["tun+", "wg+"]
    return Monitor(patterns, args.json, publish=args.publish).run()


def cmd_notify(args) -> int:
    """Desktop notices (see notify.py)."""
    from .notify import Notifier

    return Notifier().run()


COMMANDS = {
    "start": cmd_start,
    "reload": cmd_start,
    "refresh": cmd_refresh,
    "check": cmd_check,
    "show": cmd_show,
    "is-configured": cmd_is_configured,
    "status": cmd_status,
    "ensure-closed": cmd_ensure_closed,
    "leak-test": cmd_leak_test,
    "monitor": cmd_monitor,
    "notify": cmd_notify,
    "guard": cmd_guard,
    "portal": cmd_portal,
    "exclude": cmd_exclude,
    "unload": cmd_unload,
}


def main(argv=None) -> int:
    import gc

    # A short-lived process that builds many small acyclic objects: the cycle collector's
    # passes over them grow with the endpoint count and find nothing.
    gc.disable()
    try:
        args = cmdline.parse(sys.argv[1:] if argv is None else argv)
    except cmdline.Exit as e:
        return e.status
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # 'vpn-firewall show | head': the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
