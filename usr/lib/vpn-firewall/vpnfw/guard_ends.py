"""What the guard takes out when its time has come, without a compile: a portal session's
allowance when its time is up, an exclusion's rules when nothing of it runs any more, a
trusted network's LAN allowance when the network is no longer that one; and the routes
around the tunnel kept in step. A mixin of guard.Guard: each loads the recorded rules
less what ended, verifies and records them, under the rules lock.
"""

import time

from . import in_force, load
from .errors import LoadError

EXCLUSIONS_SECONDS = 1.0  # how often the guard looks whether exclusions run, trust holds, routes are right


class Ends:
    # -- a portal session's end -------------------------------------------------------
    def _portal_over(self) -> bool:
        """The recorded rules hold a portal allowance whose time is up (inert: the kernel ended
        it), and no repair of it is pending: it is time to take those rules out."""
        ends = self.portal_ends
        return ends is not None and ends <= time.time() and ends != self.portal_failed

    def _end_portal(self) -> None:
        """What the portal loaded, without its allowance: loaded, verified and recorded. The
        session's own process does this when it ends; this is for one that was killed."""
        from . import portal

        with self.lock():
            self._refresh_rules()
            if not self._portal_over():
                return
            ends, rules = self.portal_ends, portal.without_allowance(self.rules)
            try:
                for family in self.families:
                    load.load_verified(family, rules[family])
            except LoadError as e:  # the allowance is inert all the same; tried again by the next command
                self.portal_failed = ends
                self.log("warning", f"the portal session's time is up; its rules could not be removed: {e}")
                return
            in_force.record(rules)
            portal.forget_ended()
            self._refresh_rules()
        self.log("info", "the portal session's time is up: its rules are removed")

    # -- an exclusion's end --------------------------------------------------------------
    def _end_exclusions(self) -> None:
        """The rules of exclusions nothing of which runs any more, taken out: loaded, verified
        and recorded. The session's own process does this when it ends; this is for one whose
        vpn-firewall process was killed."""
        from . import exclusion, routing

        self.exclusions_at = time.monotonic() + EXCLUSIONS_SECONDS
        with self.lock():
            self._refresh_rules()
            over = exclusion.ended(self.rules)
            if not over:
                self._routes(routing)
                return
            rules = exclusion.without(self.rules, over)
            try:
                for family in self.families:
                    load.load_verified(family, rules[family])
            except LoadError as e:  # they match an empty cgroup; tried again in a while
                self.log("warning", f"an exclusion ended; its rules could not be removed: {e}")
                return
            in_force.record(rules)
            exclusion.forget_ended()
            self._refresh_rules()
            self._routes(routing)
        self.log("info", f"exclusion(s) {', '.join(sorted(over))} ended: their rules are removed")

    # -- a trusted network left ----------------------------------------------------------
    def _end_trust(self) -> None:
        """The LAN allowance of an interface whose network is no longer the trusted one (another
        gateway, the link gone), taken out at once: loaded, verified, recorded. Closing needs no
        compile; the next reload that finds the network trusted again puts it back."""
        from . import trust

        self.exclusions_at = time.monotonic() + EXCLUSIONS_SECONDS
        try:
            entries = self.trust_entries() if self.trust_entries else ()
        except Exception:  # noqa: BLE001  a config unreadable now: trust nothing
            entries = ()
        with self.lock():
            self._refresh_rules()
            gone = trust.recorded(self.rules) - set(trust.read_trusted(entries))
            if not gone:
                return
            rules = trust.without(self.rules, gone)
            # the goal from now on, whatever the load below does: were the allowance still the
            # recorded rules, a family that lost it before another failed would count as a
            # hole and get it back
            in_force.record(rules)
            self._refresh_rules()
            try:
                for family in self.families:
                    load.load_verified(family, rules[family])
            except LoadError as e:
                self.log("warning", f"left a trusted network on {', '.join(sorted(gone))}; its LAN allowance "
                                    f"could not be removed yet ({e}): the guard repairs toward the rules without it")
                now = time.monotonic()
                self.retry_at.update({family: now for family in self.families})  # compared at once
                return
        self.log("warning", f"the network on {', '.join(sorted(gone))} is no longer a trusted one: its LAN "
                            "allowance is removed (a reload puts it back when it is trusted again)")

    def _routes(self, routing) -> None:
        """The routes around the tunnel kept in step with the main table (a new gateway)."""
        if self.tunnels is None:
            return
        try:
            routing.settle(self.rules, self.tunnels())
        except Exception as e:  # noqa: BLE001  no `ip`, a config unreadable now
            self.log("warning", f"the routes around the tunnel are not updated: {e}")

