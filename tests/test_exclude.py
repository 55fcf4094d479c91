"""`vpn-firewall exclude`: one program and its children leave outside the tunnel (by the
physical interface, with its address) while they run, both families, VPN up and down; a
bystander at the same time stays in the tunnel, or blocked with the VPN down; DNS outside
only to the resolver given; nothing of it is left when it ends, or after a reload when its
vpn-firewall process was killed.

The excluded program is a small REPL (a probe a line, its answer a line), so the test asks
it and a bystander the same questions side by side. The web server answers with the address
it saw: 10.8.0.x came through the tunnel, 198.19.0.1 / 2001:db8:100::1 by the cable.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import BACKENDS, needs_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402

pytestmark = [needs_root]

REPL = r"""
import sys
sys.path.insert(0, sys.argv[1])
from netprobe import dns, http
for line in sys.stdin:
    kind, addr, *port = line.split()
    print(dns(addr) if kind == "dns" else http(addr, int(port[0])), flush=True)
"""
# A second web server (port in argv) that answers with the address it saw, as port 80's does.
SEEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.recv(1024)
    c.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + peer[0].removeprefix("::ffff:").encode())
    c.close()
"""
# IPv6 by the cable needs neighbour discovery, which $ALLOW_DHCP (the default) lets out
CONFIG = T.BASE_CONFIG.replace("@def $ALLOW_DHCP = no;\n", "")


@pytest.fixture(scope="module", autouse=True)
def exclusion_cgroups():
    """The sessions' cgroups go with their sessions; their parent, which exclude keeps, goes
    after the last test here (not while a session of a test beside these still runs)."""
    yield
    from vpnfw.exclusion import CGROUP_PARENT
    from vpnfw.portal_run import _alive, cgroup2_mount

    parent = os.path.join(cgroup2_mount(), CGROUP_PARENT)
    names = [n for n in (os.listdir(parent) if os.path.isdir(parent) else []) if not _alive(n.split("-")[0])]
    for directory in [os.path.join(parent, n) for n in names] + [parent]:
        try:
            os.rmdir(directory)
        except OSError:  # not there, or still in use beside
            pass


def exclude(bed, *args, env=None, **kw):
    """vpn-firewall exclude in the client's namespace (nsenter keeps the cgroup mount)."""
    argv = [shutil.which("nsenter"), f"--net=/run/netns/{bed.client}", sys.executable, T.LOADER, "--config-dir",
            bed.confdir, "exclude", *args]
    return subprocess.Popen(argv, env=env or bed.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def loader(bed, *args):
    """The loader as the system runs it, with the cgroup hierarchy in view (a session whose
    vpn-firewall process is gone is known alive by its cgroup; ip netns exec hides it)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{bed.client}", sys.executable, T.LOADER, "--config-dir",
                           bed.confdir, *args], env=bed.env, capture_output=True, text=True, timeout=60)


def start_repl(bed, *options):
    run = exclude(bed, *options, "--", sys.executable, "-c", REPL, os.path.dirname(T.PROBE))
    said = run.stderr.readline()
    assert "EXCLUDED from the tunnel" in said, said + (run.stderr.read() if run.poll() is not None else "")
    return run


def ask(run, question):
    run.stdin.write(question + "\n")
    run.stdin.flush()
    return run.stdout.readline().strip()


def ours_left(bed) -> list:
    """What an exclusion leaves in the client: rules, the routing rule, sessions, cgroups."""
    left = [line for fam in ("iptables-save", "ip6tables-save")
            for line in bed.in_ns(bed.client, [fam]).stdout.splitlines()
            if "exclude" in line or "EXCLUDE" in line or "MASQUERADE" in line]
    left += [line for fam in ("-4", "-6") for line in bed.in_ns(bed.client, ["ip", fam, "rule"]).stdout.splitlines()
             if "5650" in line]
    if os.path.exists(os.path.join(bed.env["VPN_FIREWALL_RUN_DIR"], "exclusions.json")):
        left.append("exclusions.json")
    return left


def wait_tunnel_gone(bed):
    deadline = time.time() + 10
    while "tun0" in bed.in_ns(bed.client, ["ip", "link"]).stdout and time.time() < deadline:
        time.sleep(0.05)


def excluded_frame(frame):
    """What the excluded program may send by the cable: its web fetches and DNS to the resolver
    given, from the cable's addresses, and the neighbour discovery IPv6 needs for them."""
    return (frame.proto == 58 or (frame.src in (T.CLIENT_V4, T.CLIENT_V6) and (
        (frame.proto == 6 and frame.dport in (80, 8080)) or (frame.proto == 17 and frame.dport == 53
                                                             and frame.dst == T.ROUTER_V4))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_excluded_program_goes_around_the_tunnel_and_a_bystander_does_not(pki, backend):
    bed = T.Testbed(pki[0], pki[1], backend=backend, config=CONFIG)
    run = None
    try:
        bed.up()
        run = start_repl(bed, "--dns", T.ROUTER_V4)
        # VPN up: the excluded program by the cable, the bystander through the tunnel
        assert ask(run, f"http {T.WEB_V4} 80") == T.CLIENT_V4
        assert ask(run, f"http {T.WEB_V6} 80") == T.CLIENT_V6
        assert bed.fetch(T.WEB_V4).startswith("10.8.0."), "a bystander stays in the tunnel"
        assert bed.fetch(T.WEB_V6).startswith("2001:db8:8:")
        status = bed.loader("status")
        assert status.returncode == 0 and "EXCLUDED from the tunnel:" in status.stdout, status.stdout
        facts = json.loads(bed.loader("status", "--json").stdout)
        assert len(facts["exclusions"]) == 1 and facts["exclusions"][0]["packets"] >= 4, facts["exclusions"]
        leak = bed.loader("leak-test")
        assert leak.returncode == 0 and "1 exclusion(s) run" in leak.stdout, leak.stdout + leak.stderr
        # VPN down: the excluded program still by the cable, the bystander blocked
        bed.stop("vpn-client")
        wait_tunnel_gone(bed)
        assert ask(run, f"http {T.WEB_V4} 80") == T.CLIENT_V4
        assert ask(run, f"dns {T.ROUTER_V4}") == "ok", "DNS to the resolver given, outside the tunnel"
        assert ask(run, f"dns {T.DNS_V4}") in ("error:EPERM", "error:ECONNREFUSED"), "no other DNS outside"
        assert bed.fetch(T.WEB_V4) == "error:ECONNREFUSED", "a bystander is blocked"
        assert bed.probe("dns", T.ROUTER_V4) in ("error:EPERM", "error:ECONNREFUSED")
        run.stdin.close()
        assert run.wait(timeout=20) == 0, "exclude exits with the command's status"
        assert "exclusion ended (the command exited)" in run.stderr.read()
        assert ours_left(bed) == [], "nothing of it is left"
        assert bed.fetch(T.WEB_V4) == "error:ECONNREFUSED"
        assert bed.loader("status").returncode == 0
        leaks = bed.leaks(allow=excluded_frame)
        assert leaks == [], f"frames outside the tunnel that were not the excluded program's: {leaks[:5]}"
    finally:
        if run and run.poll() is None:
            run.kill()
        bed.down()


def test_ports_narrow_it_and_the_rest_of_it_stays_in_the_tunnel(pki):
    bed = T.Testbed(pki[0], pki[1], config=CONFIG)
    run = None
    try:
        bed.up()
        bed.spawn("web 8080", bed.inet, [sys.executable, "-c", SEEN, "8080"], stdout=subprocess.PIPE, text=True)
        assert bed.procs["web 8080"].stdout.readline().strip() == "ready"
        run = start_repl(bed, "--ports", "8000-8100/tcp", "--dns", T.ROUTER_V4)
        assert ask(run, f"http {T.WEB_V4} 8080") == T.CLIENT_V4, "a port named: by the cable"
        assert ask(run, f"http {T.WEB_V4} 80").startswith("10.8.0."), "another port: through the tunnel"
        bed.stop("vpn-client")
        wait_tunnel_gone(bed)
        assert ask(run, f"http {T.WEB_V4} 8080") == T.CLIENT_V4
        assert ask(run, f"http {T.WEB_V4} 80") == "error:ECONNREFUSED", "another port, VPN down: blocked"
        run.stdin.close()
        assert run.wait(timeout=20) == 0
        assert ours_left(bed) == []
    finally:
        if run and run.poll() is None:
            run.kill()
        bed.down()


def test_killed_the_command_stays_excluded_while_it_runs_and_what_is_left_goes(pki):
    """vpn-firewall exclude SIGKILLed: its command stays excluded while it runs (a reload keeps
    it); once it has ended, the next reload forgets what is left, and so does the guard."""
    bed = T.Testbed(pki[0], pki[1], config=CONFIG)
    run = guard = None

    def killed_session():
        run = start_repl(bed, "--dns", T.ROUTER_V4)
        assert ask(run, f"dns {T.ROUTER_V4}") == "ok"  # its command runs (the warning comes before it)
        os.kill(run.pid, signal.SIGKILL)  # vpn-firewall exclude, not its command
        run.wait()  # reaped, as its shell would
        assert ask(run, f"http {T.WEB_V4} 80") == T.CLIENT_V4, "its command runs on, excluded"
        return run

    def ends(run):
        run.stdin.close()
        run.stdout.read()  # to its end: the command is gone

    try:
        bed.up(vpn=False)
        run = killed_session()
        assert loader(bed, "reload").returncode == 0
        assert ask(run, f"http {T.WEB_V4} 80") == T.CLIENT_V4, "a reload keeps a session whose command runs"
        ends(run)
        assert loader(bed, "reload").returncode == 0
        assert ours_left(bed) == [], "the next load forgot it: rules, routing rule, session"
        assert bed.fetch(T.WEB_V4) == "error:ECONNREFUSED"
        # the same with the guard, and no load after it
        guard = subprocess.Popen(["nsenter", f"--net=/run/netns/{bed.client}", sys.executable, T.LOADER,
                                  "--config-dir", bed.confdir, "guard"], env=bed.env, stderr=subprocess.PIPE, text=True)
        assert "guarding the rules in force" in guard.stderr.readline()
        run = killed_session()
        time.sleep(1.5)
        assert ask(run, f"http {T.WEB_V4} 80") == T.CLIENT_V4, "the guard keeps a session whose command runs"
        ends(run)
        deadline = time.time() + 8
        while ours_left(bed) and time.time() < deadline:
            time.sleep(0.1)
        assert ours_left(bed) == [], "the guard took what was left out"
        assert loader(bed, "status").returncode == 0, "and what is in force is the config's"
        guard.terminate()
        assert "ended: their rules are removed" in guard.communicate(timeout=10)[1]
    finally:
        for proc in (run, guard):
            if proc and proc.poll() is None:
                proc.kill()
        bed.down()


ERRORS = [
    ([], 2, "usage: sudo vpn-firewall exclude"),
    (["--ports", "80x", "--", "true"], 2, "--ports takes ports such as"),
    (["--ports", "90-80", "--", "true"], 2, "--ports takes ports such as"),
    (["--ports", "80/icmp", "--", "true"], 2, "--ports takes ports such as"),
    (["--dns", "10.0.0.0/8", "--", "true"], 2, "--dns takes one address, not a network"),
    (["--for", "5m", "--", "true"], 2, "exclude: unknown option '--for'"),
    (["--"], 2, "exclude: a command is needed after '--'"),
    (["--", "/nonexistent/program"], 127, "cannot run /nonexistent/program"),
]


def test_errors_open_nothing(pki, tmp_path):
    bed = T.Testbed(pki[0], pki[1], config=CONFIG)
    try:
        bed.up(vpn=False)
        before = bed.in_ns(bed.client, ["iptables-save"]).stdout.count("-A ")
        for args, code, said in ERRORS:
            run = exclude(bed, *args)
            out, err = run.communicate(timeout=30)
            assert (run.returncode, said in out + err) == (code, True), (args, out + err)
            assert ours_left(bed) == [], args
            assert bed.in_ns(bed.client, ["iptables-save"]).stdout.count("-A ") == before, args
        # no `ip` to route around the tunnel: refused, nothing opened (the iptables tools stay)
        tools = tmp_path / "no-ip"
        tools.mkdir()
        for name in os.listdir(os.path.dirname(shutil.which("iptables"))):
            if name.startswith(("iptables", "ip6tables", "xtables")):
                os.symlink(os.path.join(os.path.dirname(shutil.which("iptables")), name), tools / name)
        run = exclude(bed, "--", "true", env=dict(bed.env, PATH=str(tools)))
        out, err = run.communicate(timeout=30)
        assert run.returncode == 1 and "'ip' (package iproute2) is not installed" in err \
            and "nothing was opened" in err, err
        assert ours_left(bed) == [] and bed.fetch(T.WEB_V4) == "error:ECONNREFUSED"
        # a config that does not compile: refused, nothing opened
        with open(os.path.join(bed.confdir, "30_user.conf"), "a") as f:
            f.write("@def $VPN_SERVERS = (;\n")
        run = exclude(bed, "--", "true")
        out, err = run.communicate(timeout=30)
        assert run.returncode == 3 and "the config does not compile, nothing was opened" in err, err
        assert ours_left(bed) == [] and bed.fetch(T.WEB_V4) == "error:ECONNREFUSED"
    finally:
        bed.down()
