"""`vpn-firewall notify`: desktop notices, as the desktop's user (a systemd user unit, off by
default): "VPN down: the kill switch holds" with what it blocked meanwhile, "VPN back up",
and the lockdown; at most one notice a minute (NOTICE_SECONDS).

What happens comes from the events vpn-firewall-monitor.service publishes
(/run/vpn-firewall/events.jsonl, monitor.py --publish): reading blocked packets needs root,
the notices need the user's session bus. Each notice goes through the freedesktop
Notifications interface on the session bus, by `gdbus` (libglib2.0-bin).
"""

import json
import os
import subprocess
import time

from . import state
from .monitor import PUBLISHED

NOTICE_SECONDS = float(os.environ.get("VPN_FIREWALL_NOTICE_SECONDS", "60"))
GATHER_SECONDS = 3.0  # after the tunnel went down: what was blocked meanwhile goes into the notice
LOOK_SECONDS = 0.5  # the events file looked at this often (a stat)
# a notice the session bus did not take (no notification daemon yet) is sent again this much later
RETRY_SECONDS = float(os.environ.get("VPN_FIREWALL_NOTICE_RETRY_SECONDS", "10"))
LOCKDOWN = ("vpn-firewall: LOCKDOWN", "a start failed: everything but loopback is dropped (vpn-firewall status says why)")


def notify(summary: str, body: str) -> bool:
    """One notice on the session bus; whether it was taken."""
    argv = ["gdbus", "call", "--session", "--dest", "org.freedesktop.Notifications",
            "--object-path", "/org/freedesktop/Notifications", "--method", "org.freedesktop.Notifications.Notify",
            "vpn-firewall", "0", "network-vpn", summary, body, "[]", "{}", "10000"]
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Notifier:
    def __init__(self, path=None, send=notify):
        self.path = path or state.in_run_dir(PUBLISHED)
        self.send = send
        self.offset = self.inode = None
        self.tunnels = {}  # interface -> up
        self.down_since = None  # when the last tunnel went down (gathering what is blocked)
        self.blocked = {}  # "uid N to dst:port" -> packets, since the tunnel went down
        self.last_notice = 0.0
        self.pending = None  # (summary, body) held back by the one-a-minute limit, or not taken
        self.retry_at = 0.0  # when a notice the bus did not take may be sent again
        self.replaying = False  # the first look: the file's old events tell the state, not news
        self.lockdown = False

    def events(self) -> list:
        """The events appended since the last look (from the start of a new file)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if self.inode != st.st_ino or (self.offset or 0) > st.st_size:
            # a new file, or the first look: read it whole (at the first look its events tell
            # how things stand now: a tunnel down then gets its notice, and a lockdown)
            self.replaying = self.inode is None
            self.offset, self.inode = 0, st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        out = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def take(self, event) -> None:
        kind = event.get("event")
        if kind == "start":  # a monitor (re)started: how the tunnels are now
            self.tunnels = {name: bool(up) for name, up in event.get("tunnels", {}).items()}
        elif kind == "tunnel":
            was_up = any(self.tunnels.values())
            self.tunnels[event["interface"]] = bool(event.get("up"))
            up = any(self.tunnels.values())
            if was_up and not up:
                self.down_since, self.blocked = time.monotonic(), {}
            elif up and not was_up and self.down_since is not None:
                self.down_since = None
                if not self.replaying:
                    self.say("VPN back up", f"{event['interface']} is up: traffic goes through the tunnel again")
        elif kind == "blocked" and self.down_since is not None and event.get("destination"):
            who = f"uid {event['uid']}" if event.get("uid") is not None else "the system"
            where = event["destination"] + (f":{event['port']}" if event.get("port") is not None else "")
            key = f"{who} to {where}"
            self.blocked[key] = self.blocked.get(key, 0) + int(event.get("packets", 1))
        elif kind in ("lockdown", "loaded"):
            self.lockdown = kind == "lockdown"
            if self.lockdown and not self.replaying:
                self.say(*LOCKDOWN)

    def gathered(self) -> None:
        """The tunnel has been down a few seconds: the notice, with what was blocked."""
        if self.down_since is None or time.monotonic() - self.down_since < GATHER_SECONDS or self.down_since < 0:
            return
        total = sum(self.blocked.values())
        top = max(self.blocked, key=self.blocked.get) if self.blocked else None
        body = "the kill switch holds: nothing leaves outside the tunnel"
        if total:
            body += f"; {total} packet(s) blocked, most {top}"
        self.say("VPN down", body)
        self.down_since = -1.0  # said: the next notice is the tunnel's return

    def say(self, summary, body) -> None:
        if time.monotonic() - self.last_notice < NOTICE_SECONDS and self.last_notice:
            self.pending = (summary, body)  # the latest state, once the minute is over
            return
        self.pending = None
        if self.send(summary, body):
            self.last_notice = time.monotonic()
        else:  # no notification daemon yet (a login still starting): kept, not lost
            self.pending, self.retry_at = (summary, body), time.monotonic() + RETRY_SECONDS

    def held(self) -> None:
        """The notice held back, once the minute is over and a failed send's wait too."""
        now = time.monotonic()
        if self.pending and (not self.last_notice or now - self.last_notice >= NOTICE_SECONDS) and now >= self.retry_at:
            self.say(*self.pending)

    def run(self) -> int:
        while True:
            for event in self.events():
                self.take(event)
            if self.replaying:  # the state as it stands: a lockdown in force is news to this user
                self.replaying = False
                if self.lockdown:
                    self.say(*LOCKDOWN)
            self.gathered()
            self.held()
            time.sleep(LOOK_SECONDS)
