"""Shared helpers: the loader under test, config dirs, namespaces of our own."""

import os
import shutil
import subprocess
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBDIR = os.path.join(ROOT, "usr", "lib", "vpn-firewall")
LOADER = os.path.join(LIBDIR, "vpn-firewall")
SHIPPED_CONFIG = os.path.join(ROOT, "etc", "vpn-firewall")
sys.path.insert(0, LIBDIR)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
# Tests that measure time (how fast the guard repairs, a boot under load): run alone, after
# the others (make test runs the rest side by side first).
alone = pytest.mark.alone


# Side by side, the longest tests start first (files by what their tests take, measured),
# so that none of them is the last one left running on a worker while the others sit idle.
LONGEST_FIRST = ("test_guard_soak.py", "test_networkmanager.py", "test_boot_lifecycle.py", "test_portal.py", "test_e2e.py",
                 "test_openconnect.py", "test_boot.py", "test_wireguard.py", "test_other_tools.py",
                 "test_hardening.py", "test_ferm_diff.py", "test_fuzz.py", "test_leak_test.py", "test_kernel.py",
                 "test_fail_closed.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: next((n for n, name in enumerate(LONGEST_FIRST) if item.fspath.basename == name),
                                     len(LONGEST_FIRST)))
    # The worker that runs the longest test (the soak) holds the next one in hand all the
    # while (TwoInHand below): let that be a quick one.
    quick = next((n for n, item in enumerate(items) if item.fspath.basename not in LONGEST_FIRST), None)
    if quick is not None and quick > 1:
        items.insert(1, items.pop(quick))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's own scheduler hands each worker a chunk of 30 consecutive tests up front, so
    tests queue behind a two-minute soak; here each worker holds two, the one it runs and
    the next, and takes more as it finishes them (the order above then holds)."""
    from xdist.scheduler import LoadScheduling

    class TwoInHand(LoadScheduling):
        def schedule(self):
            if self.collection is not None or not self._check_nodes_have_same_collection():
                return super().schedule()
            self.collection = list(self.node2collection.values())[0]
            self.pending[:] = range(len(self.collection))
            for node in self.nodes:
                if self.pending:
                    self._send_tests(node, min(2, len(self.pending)))
            if not self.pending:
                for node in self.nodes:
                    node.shutdown()

        def check_schedule(self, node, duration=0):
            if node.shutting_down:
                return
            if not self.pending:
                node.shutdown()
            elif len(self.node2pending[node]) < 2:
                self._send_tests(node, min(2 - len(self.node2pending[node]), len(self.pending)))

    return TwoInHand(config, log)


def pytest_configure(config):
    config.addinivalue_line("markers", "alone: measures time: run after the others, not beside them")
    # the leak matrix's rows, from every worker when tests run side by side (pytest-xdist)
    if "VPN_FIREWALL_TEST_ROWS" not in os.environ:  # made by the first row, removed by the summary
        import tempfile

        os.environ["VPN_FIREWALL_TEST_ROWS"] = os.path.join(tempfile.gettempdir(), f"vpnfw-leak-matrix-{os.getpid()}")
BACKENDS = ["nft", "legacy"]  # the iptables backends every kernel test runs with
E2E = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e")
sys.path.insert(0, E2E)


@pytest.fixture(autouse=True)
def own_state(tmp_path_factory, monkeypatch):
    """Each test its own run and state directories and lock: nothing carries from one test to
    the next, tests may run side by side, and none writes this machine's /run or /var/lib."""
    where = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("VPN_FIREWALL_RUN_DIR", str(where / "run"))
    monkeypatch.setenv("VPN_FIREWALL_STATE_DIR", str(where / "state"))
    monkeypatch.setenv("VPN_FIREWALL_LOCK", str(where / "lock"))
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    return where


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """(work directory, PKI): a throwaway CA, server and client certificates for OpenVPN."""
    if not shutil.which("openvpn"):
        pytest.skip("needs openvpn")
    import testbed

    work = tmp_path_factory.mktemp("pki")
    return str(work), testbed.PKI(str(work))


def write_config(directory, files: dict) -> str:
    """A config dir as root would leave it: 0755 dir, 0644 files."""
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    for name, text in files.items():
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
    return str(directory)


@pytest.fixture
def confdir(tmp_path):
    """Returns a function: files -> a fresh config directory holding them."""
    counter = iter(range(1000))

    def make(files: dict) -> str:
        return write_config(tmp_path / f"conf{next(counter)}", files)

    os.chmod(tmp_path, 0o755)
    return make


def run_loader(args, env=None, netns=None, timeout=60):
    """Run the loader as a process, optionally inside a named network namespace."""
    argv = [sys.executable, LOADER] + list(args)
    if netns:
        argv = [shutil.which("ip"), "netns", "exec", netns] + argv
    full_env = dict(os.environ)  # with this test's own run and state directories (own_state)
    full_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout)


def backend_path(tmp_path, backend: str) -> str:
    """A PATH on which iptables* are the given backend's tools ('nft' or 'legacy')."""
    bindir = tmp_path / f"bin-{backend}"
    bindir.mkdir(exist_ok=True)
    for family in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            target = shutil.which(f"{family}-{backend}{suffix}")
            link = bindir / f"{family}{suffix}"
            if not link.exists():
                link.symlink_to(target)
    return f"{bindir}:{os.environ['PATH']}"


class Netns:
    """A network namespace this test made, removed afterwards."""

    def __init__(self, tag: str):
        self.name = f"vpnfw-{tag}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.sh("ip link set lo up")

    def sh(self, command: str, check=True, timeout=30) -> subprocess.CompletedProcess:
        out = subprocess.run(["ip", "netns", "exec", self.name, "sh", "-c", command],
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{command!r} in {self.name} failed: {out.stdout}{out.stderr}")
        return out

    def save(self, family="ip", tool=None) -> str:
        tool = tool or ("iptables-save" if family == "ip" else "ip6tables-save")
        return self.sh(tool).stdout

    def delete(self):
        if self.name:
            subprocess.run(["ip", "netns", "delete", self.name], check=False)
            self.name = None


@pytest.fixture
def netns():
    made = []

    def make(tag="t"):
        ns = Netns(tag)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()


def terminate(*procs) -> None:
    """SIGTERM to each process still running, then SIGKILL to one that outlives 5 s."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def said(compiled) -> str:
    """What a compile said (its warnings and notices), one a line, as the commands print them."""
    return "".join(text + "\n" for kind, text in compiled.said)


def rules_of(save_text: str) -> list:
    """The -A lines and chain declarations of an iptables-save text, without comments."""
    return [line for line in save_text.splitlines() if line.startswith(("-A", ":", "*"))]


def leak_matrix_row(case, backend, with_fw: int, without: int, verdict: str) -> None:
    with open(os.environ["VPN_FIREWALL_TEST_ROWS"], "a") as f:
        f.write("\t".join((case, backend, str(with_fw), str(without), verdict)) + "\n")


def pytest_terminal_summary(terminalreporter):
    """The leak matrix as a table: case, backend, frames leaked with / without, verdict."""
    if hasattr(terminalreporter.config, "workerinput"):
        return  # a worker: the controller prints the table
    path = os.environ.get("VPN_FIREWALL_TEST_ROWS")
    try:
        with open(path) as f:
            rows = sorted(tuple(line.rstrip("\n").split("\t")) for line in f)
        os.unlink(path)
    except (OSError, TypeError):
        return
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write(f"{'case':36} {'backend':8} {'leaked with':>12} {'without':>8}  verdict")
    for case, backend, with_fw, without, verdict in rows:
        shown_without = "-" if case.startswith("1 ") and without == 0 else str(without)
        write(f"{case:36} {backend:8} {with_fw:>12} {shown_without:>8}  {verdict}")


# Minimal Debian 12 trees for the boot tests (test_boot*.py, test_networkmanager.py), cached
# across runs, each named by what it includes: a new name is a new tree.
CACHE = os.environ.get("VPN_FIREWALL_TEST_CACHE", "/var/cache/vpn-firewall-tests")
BOOT_INCLUDE = "systemd,systemd-sysv,dbus,iptables,python3,iproute2,ifupdown,nftables"
TREES = {
    "bookworm-base-nft": BOOT_INCLUDE,
    # NetworkManager with its OpenVPN plugin; systemd-resolved in, purged where a test wants
    # Debian's default (NetworkManager writing resolv.conf itself)
    "bookworm-nm-resolved": BOOT_INCLUDE + ",network-manager,network-manager-openvpn,openvpn,systemd-resolved",
    # Debian's ansible-core, for the role in contrib/ansible (run with the local connection)
    "bookworm-ansible": BOOT_INCLUDE + ",ansible-core,python3-apt",
}


def cached_tree(name: str) -> str:
    """The tree, made once by mmdebstrap from Debian's packages (20-60 s)."""
    import fcntl

    path = os.path.join(CACHE, name)
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tests side by side: one of them makes it
        if not os.path.isdir(path):
            tmp = path + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={TREES[name]}", "bookworm", tmp],
                           check=True, capture_output=True)
            os.rename(tmp, path)
    return path


@pytest.fixture(scope="module")
def base():
    return cached_tree("bookworm-base-nft")


@pytest.fixture(scope="module")
def ansible_base():
    return cached_tree("bookworm-ansible")


@pytest.fixture(scope="module")
def nm_base():
    return cached_tree("bookworm-nm-resolved")
