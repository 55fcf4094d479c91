"""The command line's grammar: argv in, the command and its options out; help and usage.

    vpn-firewall [-h] [--version] [--config-dir DIR] COMMAND [OPTION ...]

Hand-written rather than argparse: this runs on the boot path, and argparse (with the
shutil, gettext and locale it pulls in) costs more to import than a small ruleset takes
to compile and load. Usage errors exit 2, as argparse's do.
"""

import os
import sys

from .exits import USAGE_ERROR, help_text

DEFAULT_CONFIG_DIR = "/etc/vpn-firewall"

# name -> (help, {option: help}); the order is the order of --help
COMMANDS = {
    "start": ("compile the config and load it; a failure keeps the old rules or closes everything", {}),
    "reload": ("the same as start: the old rules stay if the new config fails", {}),
    "refresh": ("resolve the host names in $VPN_SERVERS (DNS opened narrowly for it), pin their "
                "addresses, reload", {}),
    "check": ("validate the config and the ruleset; the kernel is not touched", {}),
    "show": ("print the iptables-restore input of both families (dry run)", {}),
    "is-configured": ("exit 0 if the config is valid and names a VPN server, else 1", {}),
    "status": ("what is loaded, whether it matches the config, what was blocked",
               {"--json": "the same facts as JSON, for scripts",
                "--prometheus": "the same facts as Prometheus metrics (node_exporter's textfile collector); "
                                "exits 0 when they were all printed"}),
    "ensure-closed": ("load the lockdown where nothing of ours is loaded (the unit's ExecStopPost "
                      "after a failed start); never opens", {}),
    "leak-test": ("try to send outside the tunnel on every interface; exit 0 only if nothing can leave", {}),
    "monitor": ("a live view until Ctrl-C: the tunnel up or down, blocked packets, the guard's repairs, "
                "sessions; one line an event", {"--json": "one JSON object a line, for scripts",
                                                "--publish": "also for the desktop notices: as JSON lines in "
                                                             "/run/vpn-firewall/events.jsonl"}),
    "notify": ("desktop notices (run as the desktop's user): the VPN down while the kill switch holds, "
               "back up, lockdown; from what a published monitor says", {}),
    "guard": ("run in the foreground until SIGTERM: put the rules in force back at once when another "
              "program removes or alters them", {}),
    "portal": ("let one program (and its children) reach a captive portal's login page outside the tunnel: "
               "tcp 80 and 443 and DNS to the network's resolver, until it exits or the time is up",
               {"--for DURATION": "how long at most: 90s, 5m, 1h (default 5m)",
                "--dns ADDR": "the resolver it may ask (default: the network's, from resolv.conf)",
                "-- COMMAND [ARG...]": "the program, run as the user who ran sudo"}),
    "exclude": ("run one program (and its children) outside the tunnel for as long as it runs: by the "
                "physical interfaces only, everything else stays in the tunnel or blocked",
                {"--ports LIST": "only to these ports: 443,8000-8100/tcp,3478/udp (default: all)",
                 "--dns ADDR": "the resolver it may ask outside the tunnel (default: the network's, "
                               "from resolv.conf)",
                 "-- COMMAND [ARG...]": "the program, run as the user who ran sudo"}),
    "unload": ("remove the kill switch and OPEN the network (needs --force)",
               {"--force": "yes, open this machine's network"}),
}

USAGE = "usage: vpn-firewall [-h] [--version] [--config-dir DIR] COMMAND [OPTION ...]"



class Args:
    """What the command line asked for: the command, the config dir, the options given."""

    def __init__(self, command: str, config_dir: str, options: frozenset, values=None, run=None):
        self.command = command
        self.config_dir = config_dir
        self.json = "--json" in options
        self.prometheus = "--prometheus" in options
        self.publish = "--publish" in options
        self.force = "--force" in options
        self.values = values or {}  # option -> its value ('--for' -> '5m')
        self.run = run  # the words after '--', or None


class Exit(Exception):
    """Stop here with this status: help and --version (0), usage errors (2)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def parse(argv: list) -> Args:
    """Args, or Exit after printing help, the version or a usage error."""
    config_dir = os.environ.get("VPN_FIREWALL_CONFIG_DIR", DEFAULT_CONFIG_DIR)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg in ("-h", "--help"):
            _print(main_help())
            raise Exit(0)
        if arg == "--version":
            from . import VERSION

            _print(f"vpn-firewall {VERSION}\n")
            raise Exit(0)
        if arg == "--config-dir":
            if i + 1 == len(argv):
                _usage_error("--config-dir needs a directory")
            config_dir, i = argv[i + 1], i + 2
        elif arg.startswith("--config-dir="):
            config_dir, i = arg.split("=", 1)[1], i + 1
        else:
            _usage_error(f"unknown option {arg!r}")
        if not config_dir:
            _usage_error("--config-dir needs a directory")
    if i == len(argv):
        _usage_error(f"a command is needed: {', '.join(COMMANDS)}")
    command, rest = argv[i], argv[i + 1:]
    if command not in COMMANDS:
        _usage_error(f"unknown command {command!r} (commands: {', '.join(COMMANDS)})")
    if command in VALUED:
        return _run_args(command, config_dir, rest)
    known = COMMANDS[command][1]
    for arg in rest:
        if arg in ("-h", "--help"):
            _print(command_help(command))
            raise Exit(0)
        if arg not in known:
            what = "option" if arg.startswith("-") else "argument"
            _usage_error(f"{command}: unknown {what} {arg!r}" + (f" (options: {', '.join(known)})" if known else ""))
    return Args(command, config_dir, frozenset(rest))


# the commands that run a program, and their options (each takes a value)
VALUED = {"portal": ("--for", "--dns"), "exclude": ("--ports", "--dns")}


def _run_args(command: str, config_dir: str, rest: list) -> Args:
    """portal|exclude [--OPTION VALUE ...] [-- COMMAND ARG...]."""
    values, i = {}, 0
    while i < len(rest) and rest[i] != "--":
        arg = rest[i]
        if arg in ("-h", "--help"):
            _print(command_help(command))
            raise Exit(0)
        name, _, inline = arg.partition("=")
        if name not in VALUED[command]:
            options = ", ".join(o for o in COMMANDS[command][1] if not o.startswith("-- "))
            _usage_error(f"{command}: unknown option {arg!r} (options: {options}, then -- COMMAND)")
        if name in values:
            _usage_error(f"{command}: {name} given twice")
        if inline:
            values[name], i = inline, i + 1
        elif i + 1 < len(rest) and rest[i + 1] != "--":
            values[name], i = rest[i + 1], i + 2
        else:
            _usage_error(f"{command}: {name} needs a value")
    run = rest[i + 1:] if i < len(rest) else None
    if run is not None and not run:
        _usage_error(f"{command}: a command is needed after '--'")
    return Args(command, config_dir, frozenset(), values, run)


def main_help() -> str:
    lines = [USAGE, "",
             "A VPN kill switch: nothing leaves this machine but through the VPN tunnel or to the VPN servers.",
             "", "commands:"]
    lines += _columns((name, text) for name, (text, _) in COMMANDS.items())
    lines += ["", "options:"]
    lines += _columns([("-h, --help", "show this help and exit (COMMAND --help: that command's)"),
                       ("--version", "show the version and exit"),
                       ("--config-dir DIR", f"read *.conf from DIR (default: {DEFAULT_CONFIG_DIR})")])
    return "\n".join(lines) + "\n\n" + help_text()


def command_help(command: str) -> str:
    text, options = COMMANDS[command]
    usage = f"usage: vpn-firewall [--config-dir DIR] {command}" + "".join(f" [{o}]" for o in options)
    lines = [usage, "", text]
    if options:
        lines += ["", "options:"] + _columns(options.items())
    return "\n".join(lines) + "\n"


def _columns(rows) -> list:
    """Name and text side by side, the text wrapped at 80 columns."""
    import textwrap  # help only: not on the boot path

    out = []
    for name, text in rows:
        head = f"  {name:<18} "
        if len(head) > 21:  # a long name gets a line of its own
            out.append(f"  {name}")
            head = " " * 21
        out.append(textwrap.fill(text, 80, initial_indent=head, subsequent_indent=" " * 21))
    return out


def _print(text: str) -> None:
    sys.stdout.write(text)


def _usage_error(message: str):
    sys.stderr.write(f"{USAGE}\nvpn-firewall: error: {message}\n")
    raise Exit(USAGE_ERROR)
