"""`vpn-firewall monitor`: a live view, one line per event, with its time: the tunnel's
interfaces up or down (rtnetlink), blocked packets (NFLOG, nflog.py) grouped by where they
went, the guard's repairs and lockdowns, portal and exclusion sessions opening and ending.
--json: one JSON object a line. It needs no other service; it sleeps in select() and looks
at /run/vpn-firewall's state files once a second (a stat each), so it costs nothing when
nothing happens. A flood is one line a second per destination, with its count.
"""

import json
import os
import select
import signal
import socket
import struct
import sys
import time

from . import links, netlink, nflog, state

WINDOW = 1.0  # blocked packets are grouped over this long, then said
SHOWN = 5  # destinations said per window; the rest as a count
RTMGRP_LINK = 0x1
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFF_UP = 0x1


PUBLISHED = "events.jsonl"  # --publish: the events as JSON lines here, for `vpn-firewall notify`
PUBLISH_MAX = 256 * 1024  # then it starts again (the old one as events.jsonl.1)


class Monitor:
    def __init__(self, patterns, as_json: bool, out=sys.stdout, publish=False):
        self.patterns, self.as_json, self.out = patterns, as_json, out
        self.publish = state.in_run_dir(PUBLISHED) if publish else None
        self.tunnels = {}  # name -> up (bool)
        self.blocked = {}  # (direction, protocol, destination, port, uid) -> count, this window
        self.window_ends = None
        self.files = {}  # path -> mtime seen
        self.guard = None
        self.sessions = None
        self.stopping = False
        self.started = time.time()
        self.repairs_seen = set()  # the guard's repairs said already

    # -- saying ----------------------------------------------------------------------
    def say(self, event: str, text: str, **fields):
        now = time.time()
        line = json.dumps({"time": round(now, 3), "event": event, **fields}) + "\n"
        if self.as_json:
            self.out.write(line)
        else:
            self.out.write(f"{time.strftime('%H:%M:%S', time.localtime(now))} {text}\n")
        self.out.flush()
        if self.publish:
            self._publish(line)

    def _publish(self, line):
        """Appended for the users' notifiers (they may read it; nothing in it is secret)."""
        try:
            if os.path.exists(self.publish) and os.path.getsize(self.publish) > PUBLISH_MAX:
                os.replace(self.publish, self.publish + ".1")
            fd = os.open(self.publish, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    # -- the tunnel --------------------------------------------------------------------
    def links_changed(self, datagram=None):
        """From the link messages themselves (a quick up-down pair would be missed by a fresh
        read), or, without them, from a read of every link."""
        if datagram is None:  # set up, as the messages' IFF_UP says (a veth whose peer is down: too)
            found = [(link.name, link.state not in ("down", "notpresent")) for link in links.read_links()]
        else:
            found = []
            for kind, body in netlink.messages(datagram):
                if kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= 16:
                    link = links._link(body)
                    up = kind == RTM_NEWLINK and bool(struct.unpack_from("=I", body, 8)[0] & IFF_UP)
                    found.append((link.name, None if kind == RTM_DELLINK else up))
        for name, up in found:
            if not links.matches(name, self.patterns) or self.tunnels.get(name, "new") == up:
                continue
            if up is None:
                self.tunnels.pop(name, None)
                self.say("tunnel", f"tunnel {name} GONE", interface=name, up=False)
                continue
            if name in self.tunnels or datagram is not None:
                self.say("tunnel", f"tunnel {name} {'UP' if up else 'DOWN'}", interface=name, up=up)
            self.tunnels[name] = up

    # -- blocked packets -----------------------------------------------------------------
    def blocked_packets(self, datagram):
        for p in nflog.packets(datagram):
            key = (p["direction"], p["protocol"], p["destination"], p["port"], p["uid"])
            self.blocked[key] = self.blocked.get(key, 0) + 1
            if self.window_ends is None:
                self.window_ends = time.monotonic() + WINDOW

    def flush_blocked(self):
        ranked = sorted(self.blocked.items(), key=lambda item: -item[1])
        for (direction, proto, dst, port, uid), count in ranked[:SHOWN]:
            where = f"{dst}:{port}" if port is not None else f"{dst}"
            who = f" from uid {uid}" if uid is not None else ""
            self.say("blocked", f"blocked {direction} {proto} {where}{who}: {count} packet(s)",
                     direction=direction, protocol=proto, destination=dst, port=port, uid=uid, packets=count)
        rest = sum(count for _, count in ranked[SHOWN:])
        if rest:
            self.say("blocked", f"blocked: {rest} more packet(s) to {len(ranked) - SHOWN} other destination(s)",
                     direction=None, packets=rest, destinations=len(ranked) - SHOWN)
        self.blocked, self.window_ends = {}, None

    # -- the guard, the sessions -------------------------------------------------------------
    def _changed(self, path) -> bool:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = None
        if self.files.get(path, 0) == mtime:
            return False
        self.files[path] = mtime
        return True

    def state_files(self, first=False):
        from .guard import read_status, status_path

        if self._changed(status_path()):
            guard = read_status()
            for r in (guard or {}).get("recent", []):
                key = (r["time"], r["family"], r["what"], r["ms"])
                if r["time"] < int(self.started) or key in self.repairs_seen:
                    continue
                self.repairs_seen.add(key)
                self.say("repair", f"guard: {r['family']}: {r['what']}{' by ' + r['by'] if r.get('by') else ''}: "
                                   f"{r['outcome']} in {r['ms']:.0f} ms", **r)
            if (guard is None) != (self.guard is None) and not first:
                self.say("guard", "guard running" if guard else "guard NOT running", running=guard is not None)
            self.guard = guard
        for name in ("portal.json", "exclusions.json"):
            if self._changed(state.in_run_dir(name)):
                self.sessions_changed(first)
        self.lockdown_changed(first)

    def sessions_changed(self, first):
        from .exclusion import read_sessions
        from .exclusion_run import shown
        from .portal import read_session

        now = {f"exclude {s['id']}": shown(s["command"]) for s in read_sessions()}
        portal = read_session()
        if portal:
            now[f"portal {portal['id']}"] = shown(portal["command"])
        if self.sessions is not None and not first:
            for key in set(now) - set(self.sessions):
                self.say("session", f"{key.split()[0]} OPEN: {now[key]}", kind=key.split()[0], command=now[key], open=True)
            for key in set(self.sessions) - set(now):
                self.say("session", f"{key.split()[0]} ended: {self.sessions[key]}", kind=key.split()[0],
                         command=self.sessions[key], open=False)
        self.sessions = now

    def lockdown_changed(self, first):
        """The rules in force were recorded anew: a load, or the lockdown."""
        if not self._changed(state.in_run_dir("ruleset")) or first:
            return
        from . import in_force
        from .model import LOCKDOWN_COMMENT

        rules = in_force.read() or {}
        if any(LOCKDOWN_COMMENT in r.line for family in rules.values() for r in family):
            self.say("lockdown", "LOCKDOWN: everything but loopback is dropped", lockdown=True)
        else:
            self.say("loaded", "rules loaded", lockdown=False)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        rt = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
        rt.bind((0, RTMGRP_LINK))
        try:
            log = nflog.open_group()
        except OSError as e:
            text = f"blocked packets cannot be shown: {e.strerror or e}"  # e.g. ulogd2 has the group
            self.say("error", text, error=str(e), message=text)
            log = None
        signal.signal(signal.SIGTERM, lambda *a: setattr(self, "stopping", True))
        self.links_changed()
        self.state_files(first=True)
        self.say("start", f"watching: tunnel {' '.join(self.patterns)}, blocked packets, the guard, sessions "
                          f"({', '.join(f'{n} ' + ('up' if u else 'down') for n, u in self.tunnels.items()) or 'no tunnel'})",
                 tunnels=self.tunnels)
        watched = [rt] + ([log] if log else [])
        next_look = time.monotonic() + 1.0
        try:
            while not self.stopping:
                waits = [next_look - time.monotonic()]
                if self.window_ends is not None:
                    waits.append(self.window_ends - time.monotonic())
                ready, _, _ = select.select(watched, [], [], max(0.0, min(waits)))
                if rt in ready:
                    while True:
                        try:
                            self.links_changed(rt.recv(65536))
                        except (BlockingIOError, InterruptedError):
                            break
                if log in ready:
                    self.blocked_packets(log.recv(1 << 20))
                if self.window_ends is not None and time.monotonic() >= self.window_ends:
                    self.flush_blocked()
                if time.monotonic() >= next_look:
                    next_look = time.monotonic() + 1.0
                    self.state_files()
        except KeyboardInterrupt:
            pass
        if self.blocked:
            self.flush_blocked()
        return 0


