"""Workers die with the platform on any POSIX system (Linux's parent-death signal exists only on Linux).

The platform process makes one pipe and keeps its write end to itself (never inherited); every worker
gets the read end and a thread that blocks reading it. Nothing is ever written, so the read returns only
when the kernel closes the write end: when the platform exits, even by SIGKILL. The worker then exits at
once, and no orphan keeps training or serving.
"""

from __future__ import annotations

import os
import threading

FD_ENV = "EMBEDFORGE_LIFELINE_FD"
EXIT_CODE = 75  # the platform went away (EX_TEMPFAIL: the job is resumed by the next platform)


class Lifeline:
    """The platform's end: one pipe for all its workers."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()  # both non-inheritable (PEP 446)

    def child_env(self) -> dict[str, str]:
        return {FD_ENV: str(self.read_fd)}


_lifeline: Lifeline | None = None
_lock = threading.Lock()


def platform_lifeline() -> Lifeline:
    """This process's lifeline, made on first use."""
    global _lifeline
    with _lock:
        if _lifeline is None:
            _lifeline = Lifeline()
        return _lifeline


def hold() -> None:
    """In a worker: exit as soon as the platform that started it is gone; a no-op outside a platform."""
    fd = os.environ.get(FD_ENV)
    if not fd:
        return

    def wait_for_eof() -> None:
        try:
            while os.read(int(fd), 1):
                pass
        except OSError:
            pass
        os._exit(EXIT_CODE)

    threading.Thread(target=wait_for_eof, name="embedforge-lifeline", daemon=True).start()
