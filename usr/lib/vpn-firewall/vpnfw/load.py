"""Loading a ruleset so that the machine is never open: restore, verify, lockdown.

Per family: when the new ruleset cannot be compiled, loaded or verified, the
rules of ours already in the kernel stay (iptables-restore is one transaction: a
failed restore changes nothing); when there are none, or what the kernel holds is not
what we meant, the lockdown ruleset is loaded, and if even that fails the built-in
policies are set to DROP one by one.
"""

from . import in_force, kernel
from .differences import differences
from .errors import ConfigError, LoadError, VerifyError
from .exits import KEPT, LOCKDOWN, OK, OPEN
from .model import LOCKDOWN_COMMENT, OUR_TABLES, our_chain
from .render import restore_input, to_printed, unload_input, with_lines

OUTCOME_EXIT = {"loaded": OK, "kept": KEPT, "lockdown": LOCKDOWN, "open": OPEN}


def _check(dump, rules, printed) -> None:
    problems = differences(dump, rules, printed)
    if problems:
        raise VerifyError("the kernel's rules are not what was loaded: " + "; ".join(problems))


def _load_verified(family: str, rules, state: dict) -> None:
    printed = with_lines(rules)
    kernel.restore(family, restore_input(rules, state, printed))
    _check(kernel.save(family), rules, printed)


def load_verified(family: str, rules) -> None:
    """`rules` in one restore, rendered for what the kernel holds now, then verified; LoadError
    (the restore changed nothing) or VerifyError (it did, and is not what was sent) otherwise."""
    _load_verified(family, rules, kernel.table_states(kernel.save(family)))


def lockdown(family: str, say, record: bool = True) -> str:
    """Close the family whatever it takes; returns 'lockdown' or 'open'. record: the
    lockdown becomes what the guard keeps in force (not when the guard itself closes)."""
    from . import policy  # only when closing: not on every start's path

    rules = policy.lockdown()[family]
    try:
        state = kernel.table_states(kernel.save(family))
        _load_verified(family, rules, state)
        say("error", f"{family}: LOCKDOWN loaded: everything but loopback is dropped")
        if record:
            _record(family, rules, say)
        return "lockdown"
    except Exception as e:  # whatever failed, the policies below still close it
        say("error", f"{family}: could not load the lockdown ruleset: {e}")
    try:
        kernel.set_drop_policies(family)
        say("error", f"{family}: LOCKDOWN by policy: INPUT, OUTPUT and FORWARD policies set to DROP")
        return "lockdown"
    except LoadError as e:
        say("error", f"{family}: COULD NOT CLOSE THE FIREWALL: {e}")
        return "open"


def _record(family: str, rules, say) -> None:
    """What is in force now, for the guard to put back."""
    _record_all({family: rules}, say)


def _record_all(changed: dict, say) -> None:
    try:
        in_force.record(changed)
    except OSError as e:  # the rules are loaded all the same; only the guard cannot know them
        say("warning", f"{', '.join(changed)}: cannot record the rules in force for the guard: {e}")


def families() -> list:
    return ["ip", "ip6"] if kernel.ipv6_available() else ["ip"]


def _read_state(family: str, saving, say):
    """(table states, whether our rules are loaded); unreadable counts as not loaded."""
    try:
        dump = kernel.dump_of(saving)
        return kernel.table_states(dump), kernel.is_loaded(dump)
    except LoadError as e:
        say("error", f"{family}: cannot read the kernel's rules: {e}")
        return {}, False


def apply(compile_ruleset, say) -> int:
    """Load what compile_ruleset() returns (family -> rules), failing closed at every step.

    A loader killed part way leaves either the old rules (a restore is one transaction)
    or, at boot, nothing yet: the unit's ExecStopPost (ensure-closed) closes that case.
    """
    try:
        return _apply(compile_ruleset, say)
    except Exception as e:  # a bug anywhere here must not leave the machine open either
        say("error", f"internal error while loading: {e.__class__.__name__}: {e}")
        return close_unloaded(say)


def close_unloaded(say, last_verified=None) -> int:
    """Close each family that holds nothing of ours; loaded rules stay. Never opens.

    last_verified: None, or a function giving the last ruleset that was loaded and verified
    for the config as it is now (family -> rules), or None when there is none. Loaded where
    it exists, so that a start that failed for another reason than the config (a sandbox, a
    crash, a killed start) leaves the VPN able to connect; the lockdown otherwise.
    """
    worst, fallback = OK, None
    for family in families():
        try:
            dump = kernel.save(family)
            loaded, state = kernel.is_loaded(dump), kernel.table_states(dump)
        except Exception:  # unreadable counts as not loaded: closing is the safe side
            loaded, state = False, {}
        if loaded:
            continue
        if fallback is None:
            fallback = (last_verified() if last_verified else None) or {}
        if family in fallback and _load_last_verified(family, fallback[family], state, say):
            continue
        worst = max(worst, OUTCOME_EXIT[lockdown(family, say)])
    return worst


def _load_last_verified(family: str, rules, state: dict, say) -> bool:
    try:
        _load_verified(family, rules, state)
    except Exception as e:  # whatever failed, the lockdown follows
        say("error", f"{family}: could not load the last verified rules: {e}")
        return False
    _record(family, rules, say)
    say("warning", f"{family}: the last verified rules loaded (the config is unchanged since they were)")
    return True


def _apply(compile_ruleset, say) -> int:
    fams = families()
    if "ip6" not in fams:
        say("notice", "ip6: the kernel has no IPv6 (no /proc/net/if_inet6): IPv6 rules skipped")
    # Nothing recorded since boot (the first start): the kernel holds nothing of ours, most
    # likely, and the rules are rendered for that at once, not after reading it. If it did
    # hold something, the read-back shows it, and the family is loaded again the careful way.
    fresh = in_force.stamp() is None
    # Otherwise the kernel's state is read while the config compiles: the saves are processes of their own.
    reading = {} if fresh else {f: kernel.start_save(f) for f in fams}
    _warn_other_backend(say)
    try:
        ruleset, problem = compile_ruleset(), None
    except (ConfigError, LoadError) as e:
        problem = str(e)
    except Exception as e:  # a bug must not leave the machine open either
        problem = f"internal error: {e.__class__.__name__}: {e}"
    if fresh:
        states, loaded = {f: {} for f in fams}, {f: None for f in fams}
    else:
        read = {f: _read_state(f, reading[f], say) for f in fams}
        states = {f: read[f][0] for f in fams}
        loaded = {f: read[f][1] for f in fams}
    if problem is not None:
        say("error", problem)
        outcomes = {f: _keep_or_lockdown(f, _loaded(f, loaded[f], say), say) for f in fams}
        return max(OUTCOME_EXIT[o] for o in outcomes.values())

    # The families side by side: each restore starts as soon as its text is printed, every
    # one before any is waited for; each read-back as soon as its own restore is done.
    printed, restoring = {}, {}
    for family in fams:
        printed[family] = with_lines(ruleset[family])
        restoring[family] = kernel.start_restore(family, restore_input(ruleset[family], states[family], printed[family]))
    verifying, outcomes, verified = {}, {}, {}
    for family in fams:
        try:
            kernel.check_restored(restoring[family])
            verifying[family] = kernel.start_save(family)
        except LoadError as e:  # a failed restore changed nothing
            say("error", f"{family}: {e}")
            outcomes[family] = _keep_or_lockdown(family, _loaded(family, loaded[family], say), say)
    for family, saving in verifying.items():
        try:
            dump = kernel.dump_of(saving)
            if fresh and differences(dump, ruleset[family], printed[family]):
                # it held something after all (another tool restored chains of ours at boot):
                # load the family again, rendered for what it holds
                kernel.restore(family, restore_input(ruleset[family], kernel.table_states(dump), printed[family]))
                dump = kernel.save(family)
            _check(dump, ruleset[family], printed[family])
            outcomes[family] = "loaded"
            verified[family] = to_printed(ruleset[family], printed[family])
        except VerifyError as e:
            say("error", f"{family}: {e}")
            outcomes[family] = lockdown(family, say)
        except LoadError as e:  # the restore went through, but what it left cannot be told
            say("error", f"{family}: cannot read the rules back after loading them: {e}")
            outcomes[family] = lockdown(family, say)
    if verified:  # every family at once: the file is read and written once
        _record_all(verified, say)
    return max(OUTCOME_EXIT[o] for o in outcomes.values())


def _loaded(family: str, known, say) -> bool:
    """Whether our rules are loaded in the family: as read before, or read now."""
    if known is not None:
        return known
    try:
        return kernel.is_loaded(kernel.save(family))
    except LoadError:
        return False  # unreadable counts as not loaded: closing is the safe side


def _warn_other_backend(say) -> None:
    """Rules in the other iptables backend apply too, and vpn-firewall does not see them."""
    try:  # advice only: nothing here may stop the load
        backend = kernel.backend()
        others = kernel.other_backend_rules(backend)
    except (LoadError, OSError):
        return
    if others:
        other = "legacy" if backend == "nft" else "nft"
        say("warning", f"iptables-{other} holds rules too ({', '.join(others)}): they apply to every packet "
                       f"besides vpn-firewall's (loaded with iptables-{backend}); see iptables-{other}-save")


def _keep_or_lockdown(family: str, loaded: bool, say) -> str:
    if loaded:
        say("error", f"{family}: the rules loaded before stay in force")
        return "kept"
    return lockdown(family, say)


def unload(say) -> int:
    worst = OK
    for family in families():
        try:
            state = kernel.table_states(kernel.save(family))
            kernel.restore(family, unload_input(state))
            dump = kernel.save(family)
            left = [c for t in OUR_TABLES for c in dump.tables.get(t, ({}, {}))[0] if c.startswith("VPNFW-")]
            if left:
                raise LoadError(f"chains still there after unload: {', '.join(left)}")
            say("warning", f"{family}: vpn-firewall unloaded: policies ACCEPT, traffic is NOT protected")
            in_force.forget(family)
        except LoadError as e:
            say("error", f"{family}: unload failed: {e}")
            worst = KEPT
    return worst


def is_lockdown(dump) -> bool:
    rules = dump.tables.get("filter", ({}, {}))[1].get(our_chain("OUTPUT"), [])
    return any(LOCKDOWN_COMMENT in line for line in rules)
