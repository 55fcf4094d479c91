"""kernel.Running: the child processes the loader starts now and collects later.

No kernel rules here: stand-in shell commands show the plumbing (in-memory files instead
of pipes, side by side without threads, time limits, tools that are missing).
"""

import os

import pytest

from vpnfw import kernel
from vpnfw.errors import LoadError


def sh(script: str, stdin: str = None) -> kernel.Running:
    return kernel.Running(["sh", "-c", script], stdin)


def test_large_input_and_output_on_both_streams_do_not_block():
    text = "".join(f"-A VPNFW-OUTPUT rule {i}\n" for i in range(50000))  # far beyond a pipe's 64 KiB
    done = sh("cat; head -c 300000 /dev/zero | tr '\\0' e >&2; exit 3", text).finish()
    assert done.returncode == 3
    assert done.stdout == text
    assert done.stderr == "e" * 300000


def test_tools_run_side_by_side_before_any_is_waited_for(tmp_path):
    # each one waits for the other's mark: started one after the other, they would hang
    a, b = tmp_path / "a", tmp_path / "b"
    first = sh(f"touch {a}; while [ ! -e {b} ]; do sleep 0.01; done; echo first")
    second = sh(f"touch {b}; while [ ! -e {a} ]; do sleep 0.01; done; echo second")
    assert first.finish(timeout=10).stdout == "first\n"
    assert second.finish(timeout=10).stdout == "second\n"


def test_a_missing_tool_is_a_load_error_when_collected(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    running = kernel.Running(["iptables-save"])  # starting never raises
    with pytest.raises(LoadError, match="^iptables-save not found: is the iptables package installed\\?$"):
        running.finish()


def test_a_tool_that_cannot_be_run_is_a_load_error(tmp_path):
    tool = tmp_path / "iptables-save"
    tool.write_text("not a program\n")
    tool.chmod(0o644)
    with pytest.raises(LoadError, match="^cannot run .*iptables-save: Permission denied$"):
        kernel.Running([str(tool)]).finish()


def test_a_tool_that_hangs_is_killed_at_the_time_limit():
    running = sh("exec sleep 30")
    with pytest.raises(LoadError, match="^sh did not finish within 0.3 s$"):
        running.finish(timeout=0.3)
    with pytest.raises(ChildProcessError):
        os.waitpid(running.pid, os.WNOHANG)  # killed and reaped: nothing left behind


def test_death_by_signal_is_a_negative_status():
    assert sh("kill -TERM $$").finish().returncode == -15


def test_no_descriptor_is_left_open_once_collected():
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(20):
        sh("echo out; echo err >&2", "in").finish()
        with pytest.raises(LoadError):
            kernel.Running(["/nonexistent/tool"]).finish()
    assert set(os.listdir("/proc/self/fd")) == before
