"""Real ``celery worker`` processes for tests, benchmarks and the soak: start, log, stop, kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Return the first truthy value of ``predicate()``, or its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a worker's pool), [] if it is gone."""
    try:
        return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def children_rss_kb(pid: int) -> int:
    """Resident memory of ``pid``'s child processes together, in KiB."""
    return sum(rss_kb(k) for k in children(pid))


class Worker:
    """One `celery -A APP worker` process group, logging to a file."""

    def __init__(
        self,
        app: str,
        cwd: Path,
        env: dict[str, str],
        log_path: Path,
        pool: str = "prefork",
        concurrency: int = 2,
        extra_args: tuple[str, ...] = (),
        loglevel: str = "info",
    ) -> None:
        self.app = app
        self.cwd = cwd
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "C_FORCE_ROOT": "1"}
        # The app module is imported from ``cwd``, as ``celery -A`` does from the shell.
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))
        self.log_path = log_path
        self.pool = pool
        self.concurrency = concurrency
        self.extra_args = extra_args
        self.loglevel = loglevel
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, wait_for: str | None = "Connected to Pulse", timeout: float = 60) -> Worker:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-P", self.pool, "-c", str(self.concurrency), "-l", self.loglevel,
            "-n", f"test-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip", "--without-mingle", *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_for and not self.wait_for_log(wait_for, timeout=timeout):
            raise AssertionError(f"worker did not log {wait_for!r} within {timeout} s:\n{self.log()[-4000:]}")
        return self

    def log(self) -> str:
        """The log of this run of the worker (since the last start)."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float, count: int = 1) -> bool:
        return bool(wait_until(lambda: self.log().count(text) >= count or not self.alive, timeout)) and (
            self.log().count(text) >= count
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 60) -> int:
        """Warm shutdown (SIGTERM) and wait; return the exit status."""
        assert self.process is not None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker did not stop within {timeout} s after SIGTERM") from None

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crashed host would."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
