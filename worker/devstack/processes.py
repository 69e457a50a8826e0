"""The API and the workers as background processes of `suparag dev`, like
`supabase start`'s services.

`python -m worker.devstack.api` runs detached (its own session, so it outlives the
CLI), with its pid in SUPARAG_HOME/api.pid and its output in SUPARAG_HOME/logs/api.log.
The worker runs the same way, with SUPARAG_HOME/worker.pid and
SUPARAG_HOME/logs/worker.log; the caller says how to start it (the CLI passes its
own `suparag worker`), so this supervisor never names a layer above it.

Reading a process's status needs no HTTP client: httpx (a tenth of a second to
import, with httpcore and h2) is imported only where a health check is made,
because every CLI command that finds the local stack imports this module and
`suparag search` must start fast (issue 16).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from worker.devstack.postgres import check_port_free, free_port
from worker.errors import LocalServerError

#: The API process's module (`python -m worker.devstack.api`).
MODULE = "worker.devstack.api"


class _Detached:
    """A background process of one home folder: SUPARAG_HOME/<name>.pid records its
    pid and command line, SUPARAG_HOME/logs/<name>.log collects its output."""

    #: How long stop() waits after SIGTERM before SIGKILL.
    GRACE_SECONDS = 15.0

    def __init__(self, home: Path, name: str) -> None:
        self.home = home.expanduser().resolve()
        self.pidfile = self.home / f"{name}.pid"
        self.log_path = self.home / "logs" / f"{name}.log"

    def _running(self) -> tuple[int, dict[str, Any]] | None:
        """The pid and record of the pidfile if that process runs and is ours, else None.

        After a crash the pid may belong to another program, so the process's
        command line must hold every argument it was started with.
        """
        try:
            record = json.loads(self.pidfile.read_text())
            pid = int(record["pid"])
            argv = [str(part) for part in record["argv"]]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        if not argv:
            return None
        try:
            cmdline = psutil.Process(pid).cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        if not all(part in cmdline for part in argv):
            return None
        return pid, record

    def _spawn(self, argv: list[str], *, env: dict[str, str] | None = None,
               **record: Any) -> tuple[subprocess.Popen[bytes], int]:
        """Start argv detached (with env added to this process's environment; it is not
        recorded), appending to the log; returns it and the log offset its output starts at."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            offset = log.tell()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **env} if env else None)
        self.pidfile.write_text(json.dumps({"pid": proc.pid, "argv": argv, **record}))
        return proc, offset

    def stop(self) -> bool:
        """Stop the process if it runs (SIGTERM, then SIGKILL after GRACE_SECONDS).
        Returns whether it was running."""
        running = self._running()
        self.pidfile.unlink(missing_ok=True)
        if running is None:
            return False
        _terminate(running[0], grace=self.GRACE_SECONDS)
        return True


def _terminate(pid: int, *, grace: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after grace seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(timeout=grace)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class ApiStatus:
    """A running local API."""

    pid: int
    port: int
    db_url: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalApi(_Detached):
    """The API process of one suparag home folder."""

    #: How long the API may take to answer its health check.
    READY_SECONDS = 60.0

    def __init__(self, home: Path, *, port: int) -> None:
        super().__init__(home, "api")
        self.port = port

    def status(self) -> ApiStatus | None:
        """The running API of this home, or None (a stale pidfile counts as not running)."""
        found = self._running()
        if found is None:
            return None
        pid, record = found
        return ApiStatus(pid=pid, port=int(record["port"]), db_url=str(record.get("db_url", "")))

    def start(self, db_url: str) -> tuple[ApiStatus, bool]:
        """Start the API against db_url, or reuse a running one. Returns (status, reused)."""
        running = self.status()
        if running is not None and running.db_url == db_url:
            return running, True
        if running is not None:  # the database moved (another port): follow it
            self.stop()
        check_port_free(self.port, "SUPARAG_API_PORT or --api-port")
        proc, _ = self._spawn(
            [sys.executable, "-m", MODULE, "--db-url", db_url, "--home", str(self.home),
             "--port", str(self.port)],
            port=self.port, db_url=db_url)
        import httpx  # here, not at the top: see the module docstring

        deadline = time.monotonic() + self.READY_SECONDS
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pidfile.unlink(missing_ok=True)
                raise LocalServerError(
                    f"the local API exited at start (code {proc.returncode}); "
                    f"see {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/auth/v1/health",
                             timeout=2).status_code == 200:
                    return ApiStatus(pid=proc.pid, port=self.port, db_url=db_url), False
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        _terminate(proc.pid, grace=self.GRACE_SECONDS)
        raise LocalServerError(f"the local API did not come up in {self.READY_SECONDS:.0f} s; "
                               f"see {self.log_path}")


@dataclass(frozen=True)
class WorkerStatus:
    """A running background worker (embeddings and answers)."""

    pid: int
    db_url: str
    #: Where it serves GET /health and wake-up POSTs (None for a worker started
    #: before this was recorded).
    http_port: int | None = None

    def health(self) -> dict[str, Any] | None:
        """What the worker reports on GET /health, or None if it does not answer."""
        import httpx  # here, not at the top: see the module docstring

        if self.http_port is None:
            return None
        try:
            response = httpx.get(f"http://127.0.0.1:{self.http_port}/health", timeout=2)
            return dict(response.json()) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None


class LocalWorkers(_Detached):
    """The `suparag worker` process that `suparag dev` starts for one home folder."""

    #: SIGTERM lets the batch in hand finish; a batch of 16 documents on a CPU
    #: takes seconds, so this only ends a stuck worker.
    GRACE_SECONDS = 120.0
    #: Loading torch and the model takes a few seconds alone, much longer on a busy machine.
    READY_SECONDS = 180.0

    def __init__(self, home: Path) -> None:
        super().__init__(home, "worker")

    def status(self) -> WorkerStatus | None:
        """The running worker of this home, or None (a stale pidfile counts as not running)."""
        found = self._running()
        if found is None:
            return None
        pid, record = found
        port = record.get("http_port")
        return WorkerStatus(pid=pid, db_url=str(record["db_url"]),
                            http_port=int(port) if port is not None else None)

    def start(self, db_url: str, command: Sequence[str], *,
              wake_secret: str | None = None) -> tuple[WorkerStatus, bool]:
        """Start the worker against db_url, or reuse a running one. Returns (status, reused).

        command runs `suparag worker` (the caller's, e.g. `python -m cli worker`);
        `--db-url` and `--http-port` are added to it. Returns once the worker is
        ready: its model loaded and LISTEN in place, so the first commit after
        this is embedded without waiting for a model load. (It then drains both
        queues, logging to log_path.) The worker also serves GET /health, and
        wake-up POSTs, on a free local port; with wake_secret, only POSTs that carry it
        (SUPARAG_WAKE_SECRET in its environment, never on its command line).
        """
        running = self.status()
        if running is not None and running.db_url == db_url:
            return running, True
        if running is not None:  # the database moved (another port): follow it
            self.stop()
        port = free_port()
        env = {"SUPARAG_WAKE_SECRET": wake_secret} if wake_secret else None
        proc, offset = self._spawn([*command, "--db-url", db_url, "--http-port", str(port)],
                                   env=env, db_url=db_url, http_port=port)
        status = WorkerStatus(pid=proc.pid, db_url=db_url, http_port=port)
        deadline = time.monotonic() + self.READY_SECONDS
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # bad settings, a model that cannot load
                self.pidfile.unlink(missing_ok=True)
                raise LocalServerError(
                    f"the worker exited at start (code {proc.returncode}): "
                    f"{_exit_reason(self.log_path, offset)} (log: {self.log_path})")
            health = status.health()
            if health is not None and health.get("ready"):
                return status, False
            time.sleep(0.2)
        self.stop()
        raise LocalServerError(f"the worker was not ready after {self.READY_SECONDS:.0f} s; "
                               f"see {self.log_path}")


def _exit_reason(log_path: Path, offset: int) -> str:
    """Why a process that just died says it did: its `error:` message from what it
    wrote to log_path after offset (joined across wrapped lines), else its last line."""
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [line for line in lines if line]
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if starts:
        return " ".join(lines[starts[-1]:])
    return lines[-1] if lines else "no output"
