"""Every exit status of vpn-firewall, with what it means: `--help` and vpn-firewall(8) say the same.

Worst last among a start's outcomes. Not 4-6 for those: systemd names them NOPERMISSION,
NOTINSTALLED and NOTCONFIGURED in `systemctl status`.
"""

OK = 0
REFUSED = 1  # also: status not in sync, or no VPN server can be reached; leak-test: something left
USAGE_ERROR = 2
CONFIG_ERROR = 3  # also: status, nothing of ours is loaded
KEPT, LOCKDOWN, OPEN = 10, 11, 12

# status's names for its own
IN_SYNC, DIFFERENT, NOT_LOADED = OK, REFUSED, CONFIG_ERROR

MEANINGS = (
    (OK, "done: the rules are loaded and verified (check: the config is valid;\n"
         "status: loaded and the same as the config compiles to)"),
    (REFUSED, "refused (unload without --force); status: loaded, but not the config's rules,\n"
              "or no VPN server can be reached; leak-test: something can leave outside the tunnel"),
    (USAGE_ERROR, "usage error"),
    (CONFIG_ERROR, "the config is invalid (check, show); status: nothing of ours is loaded"),
    (KEPT, "start/reload failed: the rules loaded before stay in force"),
    (LOCKDOWN, "start/reload failed: the lockdown ruleset is loaded (all but loopback dropped)"),
    (OPEN, "start/reload failed and even the lockdown could not be loaded"),
)


def help_text() -> str:
    lines = ["exit status:"]
    for code, meaning in MEANINGS:
        first, *rest = meaning.split("\n")
        lines.append(f"  {code:<2} {first}")
        lines += [f"     {line}" for line in rest]
    return "\n".join(lines) + "\n"
