"""Desktop notices: `vpn-firewall notify` on a D-Bus session bus with a notification service
of the test's own (python3-dbus), fed by a monitor publishing in a namespace: the VPN going
down while the kill switch holds (with what it blocked meanwhile), coming back, and at most
one notice per interval."""

import os
import select
import shutil
import subprocess
import sys
import time

import pytest

from conftest import LOADER, needs_root, run_loader, write_config

pytestmark = [needs_root, pytest.mark.skipif(not (shutil.which("dbus-daemon") and shutil.which("gdbus")),
                                             reason="needs dbus-daemon and gdbus (make test-deps)")]

SERVER = r"""
import dbus, dbus.service, sys
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib
DBusGMainLoop(set_as_default=True)
class Notifications(dbus.service.Object):
    @dbus.service.method("org.freedesktop.Notifications", in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app, replaces, icon, summary, body, actions, hints, timeout):
        print(f"{summary}|{body}", flush=True)
        return 1
bus = dbus.SessionBus()
name = dbus.service.BusName("org.freedesktop.Notifications", bus)
Notifications(bus, "/org/freedesktop/Notifications")
print("ready", flush=True)
GLib.MainLoop().run()
"""
CABLE = ("ip link add v0 type veth peer name v1 && ip link set v0 up && ip addr add 198.19.0.1/24 dev v0 && "
         "ip route add default via 198.19.0.254 dev v0 onlink && "
         "ip neigh replace 198.19.0.254 lladdr 02:00:00:00:00:fe dev v0 nud permanent")
SEND = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(3):\n    try: s.sendto(b'x', ('192.0.2.77', 443))\n    except OSError: pass\n")


@pytest.fixture
def session_bus():
    """A D-Bus session bus of the test's own: its address; the daemon is stopped after."""
    bus = subprocess.run(["dbus-daemon", "--session", "--fork", "--print-address=1", "--print-pid=1"],
                         capture_output=True, text=True, check=True).stdout.split()
    yield bus[0]
    os.kill(int(bus[1]), 15)


def notices(server, seconds) -> list:
    got, deadline = [], time.time() + seconds
    while time.time() < deadline:
        if not select.select([server.stdout], [], [], max(0.0, deadline - time.time()))[0]:
            break
        got.append(server.stdout.readline().strip())
    return got


def test_notices_when_the_vpn_drops_and_returns(tmp_path, netns, session_bus):
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (192.0.2.1:1194/udp);\n"})
    ns = netns("notify")
    ns.sh(CABLE + " && ip link add tun0 type veth peer name vp0 && ip link set tun0 up")
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=session_bus, VPN_FIREWALL_NOTICE_SECONDS="3")
    procs = []
    try:
        server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, env=env,
                                  bufsize=0)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"
        monitor = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, LOADER, "--config-dir", conf,
                                    "monitor", "--json", "--publish"], stdout=subprocess.DEVNULL, env=env)
        procs.append(monitor)
        time.sleep(1)
        procs.append(subprocess.Popen([sys.executable, LOADER, "notify"], env=env))
        time.sleep(1)
        ns.sh("ip link set tun0 down")
        subprocess.run(["ip", "netns", "exec", ns.name, "setpriv", "--reuid=65534", "--regid=65534",
                        "--clear-groups", sys.executable, "-c", SEND], check=True)
        got = notices(server, 6)
        assert got == ["VPN down|the kill switch holds: nothing leaves outside the tunnel; "
                       "3 packet(s) blocked, most uid 65534 to 192.0.2.77:443"], got
        ns.sh("ip link set tun0 up")
        got = notices(server, 5)
        assert got == ["VPN back up|tun0 is up: traffic goes through the tunnel again"], got
        # down and up again at once: held back to one notice an interval, then the latest state
        ns.sh("ip link set tun0 down && sleep 0.2 && ip link set tun0 up")
        got = notices(server, 8)
        assert len(got) <= 1, got
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_notice_the_bus_did_not_take_comes_once_a_notification_service_is_there(own_state, session_bus):
    """At login the user's unit may start before the desktop's notification daemon: gdbus
    fails (no one owns org.freedesktop.Notifications), and the notice is kept and sent again,
    not lost. Here a lockdown in the published events, replayed at the notifier's first look."""
    run = own_state / "run"
    run.mkdir(exist_ok=True)
    (run / "events.jsonl").write_text('{"event": "lockdown", "time": 1}\n')
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=session_bus, VPN_FIREWALL_NOTICE_RETRY_SECONDS="1")
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, LOADER, "notify"], env=env))
        time.sleep(1.5)  # its first look, and its first send, which no one took
        asked = subprocess.run(["gdbus", "call", "--session", "--dest", "org.freedesktop.Notifications",
                                "--object-path", "/org/freedesktop/Notifications", "--method",
                                "org.freedesktop.DBus.Peer.Ping"], capture_output=True, text=True, env=env)
        assert asked.returncode != 0, "no notification service yet: a send must fail"
        server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, env=env,
                                  bufsize=0)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"
        got = notices(server, 4)
        assert got == ["vpn-firewall: LOCKDOWN|a start failed: everything but loopback is dropped "
                       "(vpn-firewall status says why)"], got
    finally:
        for p in procs:
            p.kill()
            p.wait()
