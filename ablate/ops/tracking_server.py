"""A tracking server for many jobs: PostgreSQL + `mlflow server`, as code (docs/TRACKING_SERVER.md).

One machine needs none of this: the default store is SQLite under results/. Many concurrent jobs (a SLURM
sweep) log to one `mlflow server` whose backend is PostgreSQL, through `MLFLOW_TRACKING_URI=http://...`;
SQLite's single writer lock would serialise them, and a shared file system makes its locking unreliable.

    python -m ablate.ops.tracking_server up   [--dir results/tracking-server] [--port 5000] [--pg-port 5433]
    python -m ablate.ops.tracking_server down [--dir ...] [--keep-postgres]

`up` prints `export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT` on stdout (so `eval "$(... up)"` works) and
is idempotent: a running PostgreSQL cluster and a healthy server are reused. Layout of the directory:
`postgres/` (the cluster, owned by the `postgres` user when run as root), `artifacts/` (served by the
server: jobs upload through it), `mlflow-server.log`, `mlflow-server.pid`.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ablate.atomic import atomic_write_text
from ablate.errors import AblateError
from ablate.tracking.store import JOB_EXECUTION_ENV

log = logging.getLogger(__name__)

PG_USER, PG_DATABASE = "mlflow", "mlflow"
PASSWORD_FILE = "ablate-mlflow-password"  # inside the data directory, readable by its owner only
DEFAULT_PORT, DEFAULT_PG_PORT = 5000, 5433  # 5433: Debian's own cluster, if any, has 5432


# -- PostgreSQL
def pg_bindir() -> Path | None:
    """Where initdb/pg_ctl/psql live: $PATH, else the newest Debian /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent  # Debian's symlinks lead to the bin dir that has psql too
    # Debian keeps the server binaries off PATH (only the psql wrappers are there).
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: _version(p.parent.parent)
    )
    return versions[-1].parent if versions else None


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in path.name.split(".") if x.isdigit())


def _pg(tool: str) -> str:
    bindir = pg_bindir()
    if bindir is None:
        raise AblateError("PostgreSQL binaries not found (apt-get install postgresql, or put pg_ctl on PATH)")
    return str(bindir / tool)


def _as_owner(cmd: list[str]) -> list[str]:
    """`cmd` run as the cluster's owner: postgres refuses to run as root, so root runs it as `postgres`."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if res.returncode != 0:
        raise AblateError(f"{' '.join(cmd)} failed ({res.returncode}): {(res.stderr or res.stdout).strip()}")
    return res


def _prepare_dir(data_dir: Path) -> None:
    """Create the data directory, owned by the user postgres will run as, and check it can reach it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    shutil.chown(data_dir, "postgres", "postgres")
    # A parent that `postgres` cannot search (pytest's and many home directories are 0700) fails initdb
    # with a confusing message; say which directory it is instead.
    if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(data_dir)]).returncode != 0:
        raise AblateError(
            f"the postgres user cannot write {data_dir}: a parent directory is not searchable by it "
            "(chmod o+x the parents, or choose a directory such as /srv/mlflow or /var/lib/ablate)"
        )


def postgres_running(data_dir: Path) -> int | None:
    """The port of the cluster running in `data_dir`, or None if it is not running."""
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "PG_VERSION").exists():
        return None
    if subprocess.run(
        _as_owner([_pg("pg_ctl"), "status", "-D", str(data_dir)]), capture_output=True
    ).returncode:
        return None
    lines = (data_dir / "postmaster.pid").read_text().splitlines()
    return int(lines[3]) if len(lines) > 3 else None  # line 4 of postmaster.pid is the port


def start_postgres(
    data_dir: str | Path, port: int = DEFAULT_PG_PORT, *, user: str = PG_USER, database: str = PG_DATABASE
) -> str:
    """Start (initialising if needed) a cluster in `data_dir` on 127.0.0.1:`port`; returns its SQLAlchemy URI.

    Idempotent: an initialised directory is not re-initialised, a running cluster is reused (on the port
    it runs on), and the user and database are created only if missing. The user's password is generated
    once and kept in the data directory (mode 0600); the superuser is reachable only through the Unix
    socket inside the data directory (0700), so nothing but its owner and root can administer it.
    """
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "PG_VERSION").exists():
        _prepare_dir(data_dir)
        _run(
            _as_owner([
                _pg("initdb"), "-D", str(data_dir), "--username=postgres", "--encoding=UTF8",
                "--auth-local=trust", "--auth-host=scram-sha-256",
            ])
        )  # fmt: skip
        log.info("initialised PostgreSQL cluster in %s", data_dir)
    running = postgres_running(data_dir)
    if running is None:
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data_dir}"
        _run(
            _as_owner([
                _pg("pg_ctl"), "start", "-D", str(data_dir), "-w", "-t", "60",
                "-l", str(data_dir / "postgres.log"), "-o", opts,
            ])
        )  # fmt: skip
        log.info("started PostgreSQL in %s on 127.0.0.1:%d", data_dir, port)
    elif running != port:
        log.warning("PostgreSQL in %s already runs on port %d, not %d; using it", data_dir, running, port)
        port = running
    password = _ensure_user_and_db(data_dir, port, user, database)
    # +psycopg2 explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which we do not install.
    return f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{port}/{database}"


def _psql(data_dir: Path, port: int, sql: str, database: str = "postgres") -> str:
    cmd = [_pg("psql"), "-h", str(data_dir), "-p", str(port), "-U", "postgres", "-d", database]
    return _run(_as_owner([*cmd, "-v", "ON_ERROR_STOP=1", "-tAc", sql])).stdout.strip()


def _ensure_user_and_db(data_dir: Path, port: int, user: str, database: str) -> str:
    pw_file = data_dir / PASSWORD_FILE
    if pw_file.exists():
        password = pw_file.read_text().strip()
    else:
        password = secrets.token_hex(16)  # hex: safe in a URI and in SQL quotes without escaping
        atomic_write_text(pw_file, password + "\n", mode=0o600)
    if not _psql(data_dir, port, f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'"):
        _psql(data_dir, port, f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
    else:  # keep the role's password in step with the file (the file may have been recreated)
        _psql(data_dir, port, f"ALTER ROLE \"{user}\" PASSWORD '{password}'")
    if not _psql(data_dir, port, f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):
        _psql(data_dir, port, f'CREATE DATABASE "{database}" OWNER "{user}"')
    return password


def stop_postgres(data_dir: str | Path) -> None:
    """Stop the cluster in `data_dir` (fast shutdown: open transactions roll back); no-op if not running."""
    data_dir = Path(data_dir).resolve()
    if postgres_running(data_dir) is not None:
        _run(_as_owner([_pg("pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast", "-w", "-t", "60"]))


# -- mlflow server
def health(url: str, timeout: float = 2.0) -> bool:
    """True if the MLflow server at `url` answers its /health endpoint."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:  # refused, reset, timed out, HTTP errors (URLError and HTTPError are OSErrors)
        return False


@dataclass
class ServerProcess:
    """An `mlflow server` process (and its workers, one process group) that can be stopped and restarted."""

    backend_uri: str
    artifacts_dir: Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    workers: int = 2
    log_file: Path | None = None
    pid: int | None = None
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The tracking URI jobs use."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The `mlflow server` command line (the backend URI travels in the environment, not in argv)."""
        mlflow = Path(sys.executable).with_name("mlflow")
        exe = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
        return [
            *exe, "server", "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
            "--serve-artifacts", "--artifacts-destination", str(Path(self.artifacts_dir).resolve()),
        ]  # fmt: skip

    def start(self, wait_s: float = 120.0) -> ServerProcess:
        """Start the server and wait until /health answers (the first start migrates the schema: ~10 s)."""
        if health(self.url):
            raise AblateError(f"something already answers on {self.url}; stop it or choose another port")
        Path(self.artifacts_dir).mkdir(parents=True, exist_ok=True)
        # MLFLOW_BACKEND_STORE_URI = --backend-store-uri, kept out of argv so `ps` does not show the password.
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": self.backend_uri}
        env.setdefault(JOB_EXECUTION_ENV, "false")  # seven more processes we never use (store.py)
        log_out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 (child owns it)
        try:
            # A new session: the server outlives a CLI that started it, and stop() signals the whole group.
            self._proc = subprocess.Popen(
                self.command(),
                env=env,
                stdout=subprocess.DEVNULL if log_out is None else log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log_out is not None:
                log_out.close()
        self.pid = self._proc.pid
        deadline = time.monotonic() + wait_s
        while not health(self.url):
            if self._proc.poll() is not None:
                raise AblateError(f"mlflow server exited with {self._proc.returncode}; see {self.log_file}")
            if time.monotonic() > deadline:
                self.stop()
                raise AblateError(
                    f"mlflow server did not answer {self.url}/health in {wait_s}s; see {self.log_file}"
                )
            time.sleep(0.25)
        log.info("mlflow server %s up (pid %d)", self.url, self.pid)
        return self

    def running(self) -> bool:
        """Whether the server (any of its processes) is running."""
        return self.pid is not None and self._group_alive()

    def _group_alive(self) -> bool:
        """Whether any process of the server's process group (started as its own session) is alive."""
        if self.pid is None:
            return False
        if self._proc is not None:
            self._proc.poll()  # reap our child: a zombie still counts as a member of the group
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """Stop the server and its workers (SIGTERM, then SIGKILL after `timeout`); no-op if not running.

        Killing is safe for the data: every write is one database transaction, applied whole or not at
        all, and the clients retry what got no answer.
        """
        if self.pid is None or not self._group_alive():
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        # The whole group, not just the main process: a worker left behind would keep the port.
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._group_alive():
            log.warning(
                "mlflow server pid %d still running %ss after signal %d; killing it", self.pid, timeout, sig
            )
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while self._group_alive() and time.monotonic() < deadline + 10:
                time.sleep(0.1)
        # Workers left behind would hold the port; wait until nothing answers there.
        while health(self.url, timeout=0.5) and time.monotonic() < deadline + 10:
            time.sleep(0.2)

    def restart(self, wait_s: float = 120.0) -> ServerProcess:
        """Stop, then start again on the same port."""
        self.stop()
        return self.start(wait_s)


def start_server(
    backend_uri: str,
    artifacts_dir: str | Path,
    port: int = DEFAULT_PORT,
    *,
    host: str = "127.0.0.1",
    workers: int = 2,
    log_file: str | Path | None = None,
    wait_s: float = 120.0,
) -> ServerProcess:
    """Start `mlflow server` over `backend_uri`, serving artifacts from `artifacts_dir`; returns when healthy."""
    server = ServerProcess(
        backend_uri, Path(artifacts_dir), port, host, workers, Path(log_file) if log_file else None
    )
    return server.start(wait_s)


# -- command line
def _pid_file(root: Path) -> Path:
    return root / "mlflow-server.pid"


def _is_mlflow(pid: int) -> bool:
    try:
        return b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def up(root: Path, port: int, pg_port: int, host: str = "127.0.0.1", workers: int = 2) -> str:
    """Start (or reuse) PostgreSQL and the server under `root`; returns the tracking URI."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    backend = start_postgres(root / "postgres", pg_port)
    url = f"http://{host}:{port}"
    pid_file = _pid_file(root)
    if pid_file.exists() and health(url):
        log.info("mlflow server already up at %s (pid %s)", url, pid_file.read_text().strip())
        return url
    server = start_server(
        backend, root / "artifacts", port, host=host, workers=workers, log_file=root / "mlflow-server.log"
    )
    atomic_write_text(pid_file, f"{server.pid} {server.port} {server.host}\n")
    return server.url


def down(root: Path, keep_postgres: bool = False) -> None:
    """Stop the server started by `up` under `root`, then (unless `keep_postgres`) its PostgreSQL."""
    root = Path(root).resolve()
    pid_file = _pid_file(root)
    if pid_file.exists():
        pid, port, host = pid_file.read_text().split()[:3]
        if _is_mlflow(int(pid)):  # a stale file's pid may belong to another process group by now
            ServerProcess("", root / "artifacts", int(port), host, pid=int(pid)).stop()
        pid_file.unlink()
    if not keep_postgres:
        stop_postgres(root / "postgres")


def main(argv: list[str] | None = None) -> int:
    """`python -m ablate.ops.tracking_server up|down`."""
    parser = argparse.ArgumentParser(
        prog="python -m ablate.ops.tracking_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path("results/tracking-server"), help="state directory")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="mlflow server port")
    parser.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT, help="PostgreSQL port (127.0.0.1)")
    parser.add_argument("--host", default="127.0.0.1", help="address the mlflow server binds to")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server worker processes")
    parser.add_argument("--keep-postgres", action="store_true", help="down: leave PostgreSQL running")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.action == "up":
            url = up(args.dir, args.port, args.pg_port, args.host, args.workers)
            print(f"export MLFLOW_TRACKING_URI={url}")
        else:
            down(args.dir, args.keep_postgres)
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
