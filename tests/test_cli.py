"""The command line: check, show, usage and exit codes (the kernel is not touched here)."""

import os
import subprocess
import sys

import pytest
from conftest import LOADER, SHIPPED_CONFIG, run_loader, write_config

EXAMPLE = "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\nchain OUTPUT daddr 192.0.2.1 proto tcp dport 631 ACCEPT;\n"


def test_check_accepts_a_good_config(tmp_path):
    conf = write_config(tmp_path / "c", {"30_user.conf": EXAMPLE})
    out = run_loader(["--config-dir", conf, "check"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("configuration OK: ")


def test_check_names_the_error_and_exits_3(tmp_path):
    conf = write_config(tmp_path / "c", {"30_user.conf": "@def $VPN_SERVERS = (198.51.100.);\n"})
    out = run_loader(["--config-dir", conf, "check"])
    assert out.returncode == 3
    assert out.stderr.strip() == f"{conf}/30_user.conf:1:22: expected an address, got '198.51.100.'"
    out = run_loader(["--config-dir", conf, "show"])
    assert out.returncode == 3 and out.stdout == ""


def test_show_prints_both_families_as_restore_input(tmp_path):
    conf = write_config(tmp_path / "c", {"30_user.conf": EXAMPLE})
    out = run_loader(["--config-dir", conf, "show"])
    assert out.returncode == 0
    assert out.stdout.startswith("# ip: iptables-restore --noflush\n*filter\n:INPUT DROP [0:0]\n")
    assert "# ip6: ip6tables-restore --noflush\n*filter\n" in out.stdout
    assert out.stdout.count("COMMIT\n") == 4  # filter and the fence, per family


def test_shipped_config_is_valid(tmp_path):
    out = run_loader(["--config-dir", SHIPPED_CONFIG, "check"])
    assert out.returncode == 0, out.stderr
    assert "$VPN_SERVERS is empty" in out.stderr


def test_usage_errors_exit_2():
    assert run_loader([]).returncode == 2
    assert run_loader(["frobnicate"]).returncode == 2


def test_help_documents_exit_codes():
    out = run_loader(["--help"])
    assert out.returncode == 0
    for code in ("0 ", "3 ", "10 ", "11 ", "12 "):
        assert f"\n  {code}" in out.stdout


def test_journal_gets_priorities(tmp_path):
    conf = write_config(tmp_path / "c", {"30_user.conf": ""})
    out = run_loader(["--config-dir", conf, "check"], env={"JOURNAL_STREAM": "1:1"})
    assert out.stderr.startswith("<4>no VPN server can be reached: $VPN_SERVERS is empty")


def test_is_configured(tmp_path):
    empty = write_config(tmp_path / "a", {"30_user.conf": "# nothing yet\n"})
    assert run_loader(["--config-dir", empty, "is-configured"]).returncode == 1
    broken = write_config(tmp_path / "b", {"30_user.conf": "@def $VPN_SERVERS = (1.2.3.);\n"})
    assert run_loader(["--config-dir", broken, "is-configured"]).returncode == 1
    good = write_config(tmp_path / "c", {"30_user.conf": EXAMPLE})
    out = run_loader(["--config-dir", good, "is-configured"])
    assert out.returncode == 0 and out.stderr == ""


def test_only_host_names_never_resolved_are_not_configured(tmp_path):
    """As status judges it: a host name nobody pinned lets no VPN client connect."""
    conf = write_config(tmp_path / "c", {"30_user.conf": "@def $VPN_SERVERS = (vpn.example.org:1194/udp);\n"})
    env = {"VPN_FIREWALL_STATE_DIR": str(tmp_path / "state")}
    assert run_loader(["--config-dir", conf, "is-configured"], env=env).returncode == 1
    out = run_loader(["--config-dir", conf, "check"], env=env)
    assert out.returncode == 0
    assert ("warning: no VPN server can be reached: the host names in $VPN_SERVERS have never been resolved; "
            "run 'vpn-firewall refresh'") in out.stderr, out.stderr


@pytest.mark.parametrize("argv, message", [
    ([], "a command is needed: start, reload,"),
    (["frobnicate"], "unknown command 'frobnicate' (commands: start,"),
    (["--frobnicate", "show"], "unknown option '--frobnicate'"),
    (["--config-dir"], "--config-dir needs a directory"),
    (["--config-dir=", "show"], "--config-dir needs a directory"),
    (["show", "--json"], "show: unknown option '--json'"),
    (["status", "--force"], "status: unknown option '--force' (options: --json, --prometheus)"),
    (["check", "extra"], "check: unknown argument 'extra'"),
])
def test_usage_errors_say_what_and_exit_2(argv, message):
    out = run_loader(argv)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("usage: vpn-firewall ")
    assert f"\nvpn-firewall: error: {message}" in out.stderr


def test_version_and_command_help():
    from vpnfw import VERSION

    out = run_loader(["--version"])
    assert (out.returncode, out.stdout) == (0, f"vpn-firewall {VERSION}\n")
    out = run_loader(["unload", "--help"])
    assert out.returncode == 0
    assert out.stdout.startswith("usage: vpn-firewall [--config-dir DIR] unload [--force]\n")
    assert "--force" in out.stdout.split("options:")[1]


def test_every_command_has_a_handler_and_a_help_line():
    from vpnfw import cli, cmdline

    assert list(cli.COMMANDS) == list(cmdline.COMMANDS)
    text = run_loader(["--help"]).stdout
    for name in cmdline.COMMANDS:
        assert f"\n  {name} " in text


def test_config_dir_with_equals_sign(tmp_path):
    conf = write_config(tmp_path / "c", {"30_user.conf": EXAMPLE})
    out = run_loader([f"--config-dir={conf}", "check"])
    assert out.returncode == 0, out.stderr


def test_show_into_a_pipe_closed_early_is_quiet(tmp_path):
    conf = write_config(tmp_path / "c", {"30_user.conf": EXAMPLE})
    # 'true' is gone before the loader writes: 'vpn-firewall show | head' at its worst
    out = subprocess.run(f"{sys.executable} {LOADER} --config-dir {conf} show | true; echo ${{PIPESTATUS[0]}}",
                         shell=True, executable="/bin/bash", capture_output=True, text=True)
    assert (out.stdout, out.stderr) == ("0\n", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user's")
def test_a_user_may_check_a_config_of_their_own_but_root_trusts_only_roots(tmp_path):
    """Only root loads rules, so root trusts only root's files; a user checking a config in
    their home trusts their own (make test-unit runs as a user)."""
    import shutil
    import tempfile

    home = tempfile.mkdtemp(prefix="vpnfw-user-")  # pytest's own directories are root's only
    try:
        os.chmod(home, 0o755)
        conf = write_config(os.path.join(home, "c"), {"30_user.conf": EXAMPLE})
        for path in (conf, os.path.join(conf, "30_user.conf")):
            os.chown(path, 65534, 65534)
        # the loader where that user can read it (a checkout may be in a directory only root reads)
        shutil.copytree(os.path.dirname(LOADER), os.path.join(home, "lib"), ignore=shutil.ignore_patterns("__pycache__"))
        loader = os.path.join(home, "lib", os.path.basename(LOADER))
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                              loader, "--config-dir", conf, "check"], capture_output=True, text=True)
        assert out.returncode == 0 and "configuration OK" in out.stdout, out.stderr
        out = run_loader(["--config-dir", conf, "check"])
        assert out.returncode == 3 and "the config directory is owned by uid 65534, not root" in out.stderr
    finally:
        shutil.rmtree(home)
