"""The leak matrix: each case runs on a fresh test bed, with or without vpn-firewall.

A case returns (observations, expected observations with vpn-firewall, frame filter): the
filter says which frames the case itself allows on the wire besides ARP and the VPN flow.
Every case but the first must leak without vpn-firewall: the negative control.
"""

import os
import random
import signal
import subprocess
import sys
import time

import testbed as T

BROKEN = T.BASE_CONFIG + "@def $LAN_NETS = (192.168.1.0/24\n    198.19.0.);\n"
BROKEN_AT = "30_user.conf:6:5: expected an address, got '198.19.0.'"
NOTHING = lambda frame: False  # noqa: E731


def _flooder(bed, addr=T.WEB_V4, seconds=60):
    """A bounded UDP flood from the client towards `addr` (outside the tunnel unless it is up)."""
    return bed.spawn("flooder", bed.client, [sys.executable, T.PROBE, "flood", addr, "9", "30000", str(seconds)],
                     stdout=subprocess.DEVNULL)


def tunnel(bed):
    """1. Firewall loaded before the link; VPN up: the web server sees the tunnel address."""
    seen = {"v4": bed.fetch(T.WEB_V4), "v6": bed.fetch(T.WEB_V6)}
    obs = {"v4 via tunnel": seen["v4"].startswith("10.8.0."), "v6 via tunnel": seen["v6"].startswith("2001:db8:8:")}
    return obs, {k: True for k in obs}, NOTHING


def bypass(bed):
    """2. Bypass attempts while the VPN is up."""
    obs = {}
    obs["bound to eth0 (v4)"] = bed.fetch(T.WEB_V4, "eth0")
    obs["bound to eth0 (v6)"] = bed.fetch(T.WEB_V6, "eth0")
    bed.in_ns(bed.client, ["ip", "route", "add", f"{T.WEB_V4}/32", "via", T.ROUTER_V4, "dev", "eth0"])
    obs["host route past the tunnel"] = bed.fetch(T.WEB_V4)
    bed.in_ns(bed.client, ["ip", "route", "del", f"{T.WEB_V4}/32"])
    bed.in_ns(bed.client, ["ip", "-6", "route", "add", f"{T.WEB_V6}/128", "via", T.ROUTER_V6, "dev", "eth0"])
    obs["IPv6 outside the tunnel"] = bed.fetch(T.WEB_V6)
    bed.in_ns(bed.client, ["ip", "-6", "route", "del", f"{T.WEB_V6}/128"])
    obs["DNS to the router's resolver"] = bed.probe("dns", T.ROUTER_V4)
    obs["DNS through the tunnel to another resolver"] = bed.probe("dns", T.DNS_V4)
    obs["raw UDP to the router"] = bed.probe("raw", T.ROUTER_V4)
    obs["still works through the tunnel"] = bed.fetch(T.WEB_V4).startswith("10.8.0.")
    refused = ("error:ECONNREFUSED", "error:EPERM")
    expected = {k: refused for k in obs}
    expected["still works through the tunnel"] = True
    expected["DNS through the tunnel to another resolver"] = refused  # only $DNS_SERVERS
    return obs, expected, NOTHING


def killed(bed):
    """3. VPN client SIGKILLed: an open TCP stream keeps sending, new fetches, the server's keepalives."""
    stream = bed.spawn("stream", bed.client, [sys.executable, T.PROBE, "stream", T.WEB_V4, "9000", "6"],
                       stdout=subprocess.PIPE, text=True)
    assert stream.stdout.readline().strip() == "connected"
    time.sleep(0.5)
    bed.stop("vpn-client", signal.SIGKILL)
    obs = {}
    time.sleep(0.3)
    obs["fetch after the kill"] = bed.fetch(T.WEB_V4)
    obs["DNS after the kill"] = bed.probe("dns", T.TUNNEL_DNS)
    time.sleep(3)  # the server keeps sending keepalives: the kernel's ICMP errors must not leave
    obs["fetch v6 after the kill"] = bed.fetch(T.WEB_V6)
    refused = ("error:ECONNREFUSED", "error:EPERM", "error:ENETUNREACH")
    return obs, {k: refused for k in obs}, NOTHING


def reconnect(bed):
    """4. VPN reconnect (SIGUSR1, then a full client restart): no leak in the gap; traffic resumes."""
    _flooder(bed, seconds=30)
    time.sleep(0.3)
    bed.procs["vpn-client"].send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    bed.wait_tunnel()
    obs = {"resumed after SIGUSR1": bed.fetch(T.WEB_V4).startswith("10.8.0.")}
    bed.stop("vpn-client")
    time.sleep(0.5)
    bed.start_vpn_client()
    obs["resumed after a restart"] = bed.fetch(T.WEB_V4).startswith("10.8.0.")
    obs["v6 resumed"] = bed.fetch(T.WEB_V6).startswith("2001:db8:8:")
    bed.stop("flooder")
    return obs, {k: True for k in obs}, NOTHING


def reloads(bed):
    """5. 100 reloads while a bounded flooder tries to reach the internet outside the tunnel."""
    _flooder(bed, seconds=60)
    codes = set()
    if bed.firewall:
        for _ in range(100):
            codes.add(bed.loader("reload").returncode)
    else:
        time.sleep(2)
    bed.stop("flooder")
    obs = {"every reload succeeded": codes == {0}}
    return obs, {k: True for k in obs}, NOTHING


def broken_reload(bed):
    """6a. Broken config on reload: the old rules stay, the error names file:line:col."""
    _flooder(bed, seconds=30)
    bed.write_config(BROKEN)
    out = bed.loader("reload") if bed.firewall else None
    time.sleep(0.5)
    bed.stop("flooder")
    obs = {"exit 10": out is not None and out.returncode == 10,
           "names file:line:col": out is not None and BROKEN_AT in out.stderr}
    return obs, {k: True for k in obs}, NOTHING


def broken_start(bed):
    """6b. Broken config at the first start (the bed was started with it): lockdown."""
    _flooder(bed, seconds=30)
    time.sleep(1)
    bed.stop("flooder")
    status = bed.loader("status")
    obs = {"lockdown": "LOCKDOWN" in status.stdout, "start exited 11": bed.start_code == 11}
    return obs, {k: True for k in obs}, NOTHING


def killed_loader(bed):
    """7. The loader killed at random points of a start, and an iptables-restore that fails."""
    rng = random.Random(7)
    _flooder(bed, seconds=60)
    if bed.firewall:
        for _ in range(20):
            bed.spawn("loader", bed.client, [sys.executable, T.LOADER, "--config-dir", bed.confdir, "start"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0, 0.2))
            bed.stop("loader", signal.SIGKILL)
        standin = os.path.join(bed.workdir, "standin")
        os.makedirs(standin, exist_ok=True)
        for name in ("iptables-restore", "ip6tables-restore"):
            with open(os.path.join(standin, name), "w") as f:
                f.write("#!/bin/sh\ncat >/dev/null; echo 'stand-in: refused' >&2; exit 1\n")
            os.chmod(os.path.join(standin, name), 0o755)
        saved = bed.env["PATH"]
        bed.env["PATH"] = standin + ":" + saved
        failing = bed.loader("reload").returncode
        bed.env["PATH"] = saved
    else:
        failing = 10
        time.sleep(2)
    bed.stop("flooder")
    obs = {"failing restore keeps the rules (exit 10)": failing == 10}
    return obs, {k: True for k in obs}, NOTHING


def killed_first_start(bed):
    """7b. The loader killed at the very start of the first start, before the link is up; the
    unit's ExecStopPost (ensure-closed) closes it before the network comes up."""
    _flooder(bed, seconds=30)
    time.sleep(1)
    bed.stop("flooder")
    return {"closed": bed.closed_before_link}, {"closed": True}, NOTHING


def lan_blocked(bed):
    """8a. LAN not allowed: a host on the LAN is not reachable outside the tunnel."""
    obs = {"LAN host": bed.fetch(T.ROUTER_V4)}
    return obs, {"LAN host": "error:ECONNREFUSED"}, NOTHING


LAN_CONFIG = T.BASE_CONFIG + "@def $ALLOW_LAN = yes;\n@def $LAN_NETS = (198.19.0.0/24);\n"


def lan_allowed(bed):
    """8b. LAN allowed: the LAN host is reachable, DNS on the LAN is not, the internet is not."""
    obs = {"LAN host": bed.fetch(T.ROUTER_V4), "DNS on the LAN": bed.probe("dns", T.ROUTER_V4),
           "internet outside the tunnel": bed.fetch(T.WEB_V4)}
    expected = {"LAN host": T.CLIENT_V4, "DNS on the LAN": "error:EPERM",
                "internet outside the tunnel": "error:ECONNREFUSED"}

    def lan(f):  # the LAN host, and the link-scope multicast a LAN needs (MLD, router solicitation)
        return (f.version == 4 and f.dst == T.ROUTER_V4 and f.dport != 53
                or f.version == 6 and f.dst.startswith("ff02:"))
    return obs, expected, lan


DHCP_CONFIG = T.BASE_CONFIG.replace("@def $ALLOW_DHCP = no;\n", "")


def dhcp(bed):
    """8c. DHCP allowed narrowly: a DHCP exchange with a server succeeds, nothing else leaves."""
    out = bed.in_ns(bed.client, ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1",
                                 "-s", "/bin/true"], check=False)
    lease = [w.strip(",.") for w in (out.stdout + out.stderr).split() if w.startswith("198.19.0.")]
    obs = {"lease obtained": bool(lease)}
    if lease:
        bed.in_ns(bed.client, ["ip", "addr", "add", f"{lease[0]}/24", "dev", "eth0"])
        bed.in_ns(bed.client, ["ip", "route", "add", "default", "via", T.ROUTER_V4])
        obs["internet outside the tunnel"] = bed.fetch(T.WEB_V4)
    expected = {"lease obtained": True, "internet outside the tunnel": "error:ECONNREFUSED"}

    def allowed(f):
        dhcp_frame = f.version == 4 and f.proto == 17 and f.sport == 68 and f.dport == 67
        ndp = f.version == 6 and f.proto == 58 and f.sport in (133, 135, 136, 143)
        return dhcp_frame or ndp
    return obs, expected, allowed


USER_CONFIG = T.BASE_CONFIG + "@def $VPN_USER = root;\n"
PROBE_PORT = 40123


def vpn_user(bed):
    """8d. $VPN_USER: only root (the VPN client) reaches the VPN server outside the tunnel."""
    obs = {"as nobody to the VPN server": bed.probe("udpfrom", PROBE_PORT, T.ROUTER_V4, T.VPN_PORT, user="65534"),
           "the VPN works": bed.fetch(T.WEB_V4).startswith("10.8.0.")}
    expected = {"as nobody to the VPN server": "error:EPERM", "the VPN works": True}
    return obs, expected, NOTHING


GATEWAY_CONFIG = T.BASE_CONFIG + "@def $GATEWAY_INTERFACES = (lan0);\n"


def gateway(bed):
    """9a. Gateway mode, VPN up: a machine behind the client reaches the internet through the
    tunnel (masqueraded), its DNS only to $DNS_SERVERS, its IPv6 not in the clear."""
    lan = dict(ns=bed.lan)
    obs = {"v4 via the tunnel": bed.probe("http", T.WEB_V4, 80, **lan),
           "DNS to the VPN's resolver": bed.probe("dns", T.TUNNEL_DNS, **lan),
           "DNS to the router": bed.probe("dns", T.ROUTER_V4, **lan),
           "v6 (no NAT66)": bed.probe("http", T.WEB_V6, 80, **lan)}
    expected = {"v4 via the tunnel": "10.8.0.2", "DNS to the VPN's resolver": "ok",
                "DNS to the router": "error:ECONNREFUSED", "v6 (no NAT66)": ("timeout", "error:ECONNREFUSED")}
    return obs, expected, NOTHING


def gateway_killed(bed):
    """9b. Gateway mode, VPN client SIGKILLed: nothing from the machine behind leaves."""
    bed.stop("vpn-client", signal.SIGKILL)
    time.sleep(0.3)
    lan = dict(ns=bed.lan)
    obs = {"v4 after the kill": bed.probe("http", T.WEB_V4, 80, **lan),
           "v6 after the kill": bed.probe("http", T.WEB_V6, 80, **lan),
           "DNS after the kill": bed.probe("dns", T.DNS_V4, **lan)}
    blocked = ("error:ECONNREFUSED", "error:EHOSTUNREACH", "error:ENETUNREACH")
    return obs, {k: blocked for k in obs}, NOTHING


# name -> (function, test bed options)
CASES = {
    "1 VPN up: via the tunnel": (tunnel, {}),
    "2 bypass attempts, VPN up": (bypass, {}),
    "3 VPN client SIGKILLed": (killed, {}),
    "4 VPN reconnect": (reconnect, {}),
    "5 100 reloads under flood": (reloads, {"vpn": False}),
    "6a broken config on reload": (broken_reload, {"vpn": False}),
    "6b broken config at first start": (broken_start, {"vpn": False, "config": BROKEN}),
    "7a loader killed, restore fails": (killed_loader, {"vpn": False}),
    "7b loader killed at first start": (killed_first_start, {"vpn": False, "kill_first_start": True}),
    "8a LAN not allowed": (lan_blocked, {"vpn": False}),
    "8b LAN allowed": (lan_allowed, {"vpn": False, "config": LAN_CONFIG}),
    "8c DHCP allowed narrowly": (dhcp, {"vpn": False, "config": DHCP_CONFIG, "dhcp": True}),
    "8d VPN_USER": (vpn_user, {"config": USER_CONFIG}),
    "9a gateway: clients via the tunnel": (gateway, {"config": GATEWAY_CONFIG, "gateway": True}),
    "9b gateway: VPN client SIGKILLed": (gateway_killed, {"config": GATEWAY_CONFIG, "gateway": True}),
}
NO_LEAK_EXPECTED_WITHOUT = {"1 VPN up: via the tunnel"}


def run_case(name, workdir, pki, backend, firewall):
    """(leaked frames, observations, expected) of one case on a fresh test bed."""
    fn, options = CASES[name]
    options = dict(options)
    vpn = options.pop("vpn", True)
    bed = T.Testbed(workdir, pki, backend=backend, firewall=firewall, **options)
    try:
        bed.up(vpn=vpn)
        obs, expected, allowed = fn(bed)
        vpn_flow = (lambda f: f.is_vpn_flow() and f.sport != PROBE_PORT)
        leaked = bed.leaks(allow=allowed, vpn_flow=vpn_flow)
        return leaked, obs, expected
    finally:
        bed.down()


def matches(obs, expected):
    for key, want in expected.items():
        if key not in obs:
            return False
        got = obs[key]
        if isinstance(want, tuple) and got not in want or not isinstance(want, tuple) and got != want:
            return False
    return True
