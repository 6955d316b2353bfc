"""Worker processes, portably: they exit when the platform that started them dies (a pipe, not Linux's
parent-death signal), and a restarted platform recognises a leftover worker by psutil (start time and
command line, not /proc), never a stranger that reuses its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil

from embedforge.platform.jobs.runner import _our_worker, spawn

HERE = Path(__file__).parent
SRC = HERE.parent.parent / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
PARENT = """
import sys, threading
from pathlib import Path
from embedforge.platform.jobs.runner import spawn
child = spawn("lifeline_child", Path(sys.argv[1]))
print(child.pid, flush=True)
threading.Event().wait()
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_a_worker_exits_when_its_platform_is_killed(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    child = int(parent.stdout.readline())
    try:
        assert _wait(lambda: "holding" in (tmp_path / "worker.log").read_text()), "the child never started"
        assert not _gone(child)
        parent.send_signal(signal.SIGKILL)  # no handler runs: only the kernel closes the pipe
        parent.wait()
        assert _wait(lambda: _gone(child)), "the worker outlived its platform"
    finally:
        if not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_leftover_worker_is_recognised_by_start_time_and_command_line(tmp_path):
    workdir = tmp_path / "evaluation" / "eval-1"
    workdir.mkdir(parents=True)
    process = spawn("lifeline_child", workdir, {"PYTHONPATH": ENV["PYTHONPATH"]})
    try:
        assert _wait(lambda: "holding" in (workdir / "worker.log").read_text())  # exec'd: its own cmdline
        started = psutil.Process(process.pid).create_time()
        row = SimpleNamespace(worker_pid=process.pid, details={"worker_started": started})
        assert _our_worker(row, workdir).pid == process.pid
        assert _our_worker(row, tmp_path / "evaluation" / "eval-2") is None  # another job's worker
        reused = SimpleNamespace(worker_pid=process.pid, details={"worker_started": started - 5})
        assert _our_worker(reused, workdir) is None  # the pid now belongs to a later process
        stranger = SimpleNamespace(worker_pid=os.getpid(), details={})
        assert _our_worker(stranger, workdir) is None
    finally:
        process.kill()
        process.wait()
    assert _our_worker(row, workdir) is None  # gone
