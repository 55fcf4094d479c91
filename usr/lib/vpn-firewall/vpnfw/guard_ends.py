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
    def _take_out(self, rules, what: str) -> bool:
        """RULES, the recorded ones without what ended, recorded as the goal, then loaded;
        whether every family loaded. Recorded first: were the old rules still the goal, a
        family that lost them before another failed would count as a hole and get them back
        (a trusted network's LAN allowance, on the untrusted one). A failure leaves the rest
        to the guard's compare, due at once (a repair, or the lockdown and its retries)."""
        in_force.record(rules)
        self._refresh_rules()
        try:
            for family in self.families:
                load.load_verified(family, rules[family])
        except LoadError as e:
            self.log("warning", f"{what}; its rules could not be removed yet ({e}): "
                                "the guard repairs toward the rules without them")
            now = time.monotonic()
            self.retry_at.update({family: now for family in self.families})
            return False
        return True

    def _portal_over(self) -> bool:
        """The recorded rules hold a portal allowance whose time is up (inert: the kernel ended
        it): it is time to take those rules out."""
        ends = self.portal_ends
        return ends is not None and ends <= time.time()

    def _end_portal(self) -> None:
        """What the portal loaded, without its allowance: loaded, verified and recorded. The
        session's own process does this when it ends; this is for one that was killed."""
        from . import portal

        with self.lock():
            self._refresh_rules()
            if not self._portal_over():
                return
            done = self._take_out(portal.without_allowance(self.rules), "the portal session's time is up")
            portal.forget_ended()
        if done:
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
            done = self._take_out(exclusion.without(self.rules, over), "an exclusion ended")
            exclusion.forget_ended()
            self._routes(routing)
        if done:
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
            if not self._take_out(trust.without(self.rules, gone),
                                  f"left a trusted network on {', '.join(sorted(gone))}"):
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

