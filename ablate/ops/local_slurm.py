"""A real single-node SLURM cluster on 127.0.0.1, built from Debian packages, for tests and users.

    python -m ablate.ops.local_slurm up|down|status

`up()` installs slurm-wlm, slurmdbd, munge and mariadb-server if missing (root + apt-get only), writes
/etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf, starts munge, MariaDB, slurmdbd, slurmctld and slurmd,
and waits until the node takes jobs and `sacct` answers. State, spool, pid and log files live under one
folder (ABLATE_SLURM_DIR, default /tmp/ablate-slurm). A cluster that is already up is reused. `down()` stops
the three slurm daemons and leaves munge and MariaDB running (system services; idle, they cost nothing).
See docs/LOCAL_SLURM.md. Pure Python: no submitit or mlflow here.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ablate.atomic import atomic_write_text
from ablate.errors import LaunchError

log = logging.getLogger(__name__)

ENV_ROOT = "ABLATE_SLURM_DIR"
DEFAULT_ROOT = Path("/tmp/ablate-slurm")
PACKAGES = ("slurm-wlm", "slurmdbd", "munge", "mariadb-server")
# Binaries the packages provide; all present means nothing needs installing.
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "mariadbd")
SLURM_CONF = Path("/etc/slurm/slurm.conf")  # where plain `sbatch` (as submitit calls it) looks
DBD_CONF = Path("/etc/slurm/slurmdbd.conf")  # slurmdbd only reads this path (no option to move it)
CLUSTER = "ablate"
PARTITION = "local"
DATABASE = "ablate_slurm_acct"
# Not the default 6817-6819, so a site's own slurm on this machine is not disturbed.
CTLD_PORT, SLURMD_PORT, DBD_PORT = 6917, 6918, 6919
CPUS = 16  # more than the physical cores so that several one-CPU test jobs run at once
MAX_ARRAY_SIZE = 1001
# A requeued job may start again only cred_expire+1 s after the requeue (slurmctld sets its begin time so);
# the default is 120 s. 10 s still leaves a loaded 2-core machine time to launch a step before its
# credential expires (slurm's minimum is 5).
CRED_EXPIRE_S = 10
READY_NODE_STATES = ("idle", "mixed", "allocated", "completing")
DAEMONS = ("slurmd", "slurmctld", "slurmdbd")  # stop order


@dataclass(frozen=True)
class ClusterInfo:
    """What `up()` brought up: names, sizes and where its files are."""

    node: str
    root: Path
    log_dir: Path
    run_dir: Path
    cluster: str = CLUSTER
    partition: str = PARTITION
    cpus: int = CPUS
    max_array_size: int = MAX_ARRAY_SIZE
    slurm_conf: Path = SLURM_CONF
    slurmdbd_conf: Path = DBD_CONF


def _root(root: Path | None) -> Path:
    return Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT).resolve()


def _info(root: Path) -> ClusterInfo:
    node = socket.gethostname().split(".")[0]  # slurmd finds its NodeName by the short host name
    return ClusterInfo(node=node, root=root, log_dir=root / "log", run_dir=root / "run")


def _run(cmd: list[str], timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a short command, capturing its output; a missing binary or a hang reads as a failure."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        proc = subprocess.CompletedProcess(cmd, 127, "", str(e))
    if check and proc.returncode != 0:
        raise LaunchError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _tail(path: Path, lines: int = 20) -> str:
    console = path.with_name(path.stem + ".console.log")  # early errors go to the console, not the log
    if (not path.exists() or not path.stat().st_size) and console.exists():
        path = console
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join("    " + line for line in text)


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def unavailable_reason() -> str | None:
    """Why a local cluster cannot be brought up here, or None if `up()` can (or one is already up)."""
    if not sys.platform.startswith("linux"):
        return f"local slurm needs Linux, not {sys.platform}"
    if not _missing_binaries() and _answering(_info(_root(None))):
        return None  # a running cluster serves non-root users too
    if os.geteuid() != 0:
        return "local slurm needs root to start its daemons (and none is running)"
    if _missing_binaries() and shutil.which("apt-get") is None:
        return f"slurm packages missing ({', '.join(_missing_binaries())}) and no apt-get to install them"
    return None


def _node_state(node: str) -> str:
    proc = _run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], timeout=15)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""


def _sacct_ok() -> bool:
    return _run(["sacct", "-n", "-X", "-S", "now", "-o", "JobID"], timeout=15).returncode == 0


def _answering(info: ClusterInfo) -> bool:
    """Controller answers, the node takes jobs and accounting answers."""
    ping = _run(["scontrol", "ping"], timeout=15)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return False
    return _node_state(info.node) in READY_NODE_STATES and _sacct_ok()


PIDFILE_KEYS = {
    "slurmctld": (SLURM_CONF, "SlurmctldPidFile"),
    "slurmd": (SLURM_CONF, "SlurmdPidFile"),
    "slurmdbd": (DBD_CONF, "PidFile"),
}


def _pidfile(info: ClusterInfo, daemon: str) -> Path:
    """A daemon's pid file as the config on disk names it: a running cluster may use another root."""
    conf, key = PIDFILE_KEYS[daemon]
    try:
        for line in conf.read_text().splitlines():
            if line.startswith(key + "="):
                return Path(line.split("=", 1)[1].strip())
    except OSError:
        pass
    return info.run_dir / f"{daemon}.pid"


def _pid(info: ClusterInfo, daemon: str) -> int | None:
    """Pid of a daemon this module started, if it is still that daemon (pids get reused)."""
    try:
        pid = int(_pidfile(info, daemon).read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == daemon else None


def _slurm_conf(info: ClusterInfo) -> str:
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    real_mem = max(1024, int(mem_mb * 0.9))
    r, run, logs = info.root, info.run_dir, info.log_dir
    return f"""# Written by ablate.ops.local_slurm for a single-node test cluster; rewritten by each `up`.
ClusterName={CLUSTER}
SlurmctldHost={info.node}(127.0.0.1)
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
# Listen on the addresses above (127.0.0.1) only; SLURM binds every interface (0.0.0.0) by default.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs wait cred_expire+1 s before they may start again (default 120 s).
AuthInfo=cred_expire={CRED_EXPIRE_S}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={logs}/slurmctld.log
SlurmdLogFile={logs}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: works in containers; jobs are tracked by their process tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# Several jobs share the node, allocated by core. Memory is not a consumable (nor enforced): a job's --mem
# only has to fit RealMemory, so jobs asking for a few GB each still run side by side on a small machine.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Declare more CPUs than the machine has so that many small jobs run concurrently.
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# Look at pending jobs every 1-2 s rather than 30-60 s: a requeued job whose begin time has passed
# triggers no scheduling event, so it would otherwise wait for the next periodic pass.
SchedulerParameters=sched_interval=2,bf_interval=1
JobRequeue=1
SlurmctldParameters=preempt_send_user_signal
KillWait=10
MinJobAge=300
MaxArraySize={MAX_ARRAY_SIZE}
ReturnToService=2
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={DBD_PORT}
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={info.node} NodeAddr=127.0.0.1 CPUs={CPUS} Sockets=1 CoresPerSocket={CPUS} ThreadsPerCore=1 RealMemory={real_mem} State=UNKNOWN
PartitionName={PARTITION} Nodes={info.node} Default=YES MaxTime=INFINITE State=UP
"""


def _dbd_conf(info: ClusterInfo, password: str) -> str:
    return f"""# Written by ablate.ops.local_slurm; rewritten by each `up`.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={DBD_PORT}
# Listen on DbdAddr only, not every interface (SLURM's default).
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile={info.run_dir}/slurmdbd.pid
LogFile={info.log_dir}/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass={password}
StorageLoc={DATABASE}
"""


def _write(path: Path, text: str, mode: int) -> bool:
    """Write a file if its content differs; True when it changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else None
    if old != text:
        atomic_write_text(path, text, mode=mode)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)  # slurmdbd wants its conf owned by SlurmUser (root here)
    return old != text


def _install() -> None:
    log.info("installing %s (apt-get, ~30 s)", " ".join(PACKAGES))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:  # a stale package index is the usual cause
        subprocess.run(["apt-get", "update"], capture_output=True, env=env)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or _missing_binaries():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise LaunchError(f"could not install {' '.join(PACKAGES)} with apt-get:\n{tail}")


def _spawn(cmd: list[str], logfile: Path, wait_s: float = 60) -> subprocess.Popen[bytes]:
    """Start a program detached (own session), its console output appended to `logfile`.

    Slurm daemons and munged fork and exit, so wait for that; mysqld_safe stays in the foreground.
    """
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        pass
    return proc


def _wait(
    what: str, ok: Callable[[], bool], deadline: float, logfile: Path, alive: Callable[[], bool] | None = None
) -> None:
    """Poll `ok()` until true; fail with the log's tail at the deadline or when `alive()` turns false."""
    while not ok():
        if alive is not None and not alive():
            raise LaunchError(f"{what}: the daemon exited.\n{_tail(logfile)}")
        if time.monotonic() > deadline:
            raise LaunchError(f"timed out waiting for {what}.\n{_tail(logfile)}")
        time.sleep(0.5)


def _ensure_munge(info: ClusterInfo, deadline: float) -> None:
    def ok() -> bool:
        munge = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        unmunge = subprocess.run(["unmunge"], input=munge.stdout, capture_output=True, timeout=10)
        return munge.returncode == 0 and unmunge.returncode == 0

    if ok():
        return
    log.info("starting munged")
    if not Path("/etc/munge/munge.key").exists():
        _run(["mungekey", "--create"], check=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    _spawn(["runuser", "-u", "munge", "--", "munged"], info.log_dir / "munged.console.log")
    _wait("munge", ok, deadline, Path("/var/log/munge/munged.log"))


def _sql(statement: str) -> subprocess.CompletedProcess[str]:
    # As root, Debian's MariaDB lets us in through its unix socket without a password.
    return _run(["mariadb", "-u", "root", "-e", statement], timeout=30)


def _ensure_mariadb(info: ClusterInfo, deadline: float, password: str, fresh: bool) -> None:
    def ok() -> bool:
        return _run(["mariadb-admin", "-u", "root", "ping"], timeout=10).returncode == 0

    if not ok():
        log.info("starting MariaDB")
        logfile = info.log_dir / "mariadb.log"
        console = info.log_dir / "mariadb.console.log"
        Path("/run/mysqld").mkdir(exist_ok=True)
        logfile.touch()
        for path in (Path("/run/mysqld"), logfile):  # MariaDB runs as mysql and must write both
            shutil.chown(path, "mysql", "mysql")
        proc = _spawn(["mysqld_safe", f"--log-error={logfile}"], console, wait_s=1)
        failed_log = logfile if logfile.stat().st_size else console  # mysqld_safe's own errors go to console
        _wait("MariaDB", ok, deadline, failed_log, alive=lambda: proc.poll() is None)
    if fresh:  # new slurm state: old job records would clash with restarted job ids
        _sql(f"DROP DATABASE IF EXISTS {DATABASE}")
    setup = (
        f"CREATE DATABASE IF NOT EXISTS {DATABASE}; "
        f"CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '{password}'; "
        f"ALTER USER 'slurm'@'localhost' IDENTIFIED BY '{password}'; "
        f"GRANT ALL ON {DATABASE}.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    )
    result = _sql(setup)
    if result.returncode != 0:
        raise LaunchError(f"could not set up the accounting database in MariaDB: {result.stderr.strip()}")


def _start(info: ClusterInfo, daemon: str, deadline: float, ready: Callable[[], bool]) -> None:
    logfile = info.log_dir / f"{daemon}.log"
    if _pid(info, daemon) is None:
        log.info("starting %s", daemon)
        _spawn([daemon], info.log_dir / f"{daemon}.console.log")
        _wait(
            f"{daemon} to start",
            lambda: _pid(info, daemon) is not None,
            min(deadline, time.monotonic() + 20),
            logfile,
        )
    _wait(f"{daemon} to answer", ready, deadline, logfile, alive=lambda: _pid(info, daemon) is not None)


def _stop(info: ClusterInfo, daemon: str) -> None:
    pid = _pid(info, daemon)
    if pid is None:
        return
    log.info("stopping %s (pid %d)", daemon, pid)
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 20
    while _pid(info, daemon) == pid and time.monotonic() < end:
        time.sleep(0.2)
    if _pid(info, daemon) == pid:
        os.kill(pid, signal.SIGKILL)


def _register_cluster() -> None:
    listed = _run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], timeout=30)
    if CLUSTER in listed.stdout.split():
        return
    log.info("registering cluster %r with slurmdbd", CLUSTER)
    proc = _run(["sacctmgr", "-i", "add", "cluster", CLUSTER], timeout=30)
    if proc.returncode != 0 and "already exists" not in proc.stdout + proc.stderr:
        raise LaunchError(
            f"sacctmgr could not register cluster {CLUSTER}: {(proc.stderr or proc.stdout).strip()}"
        )


def _node_ready(info: ClusterInfo) -> bool:
    state = _node_state(info.node)
    if state in READY_NODE_STATES:
        return True
    if state.startswith(("down", "drain")) and "*" not in state:  # slurmd answers but the node was set down
        log.info("node %s is %s: resuming it", info.node, state)
        _run(["scontrol", "update", f"nodename={info.node}", "state=resume"], timeout=15)
    return False


def _current(confs: dict[Path, str]) -> bool:
    return all(p.exists() and p.read_text() == text for p, text in confs.items())


def _confs(info: ClusterInfo) -> tuple[str, dict[Path, str]]:
    """The accounting database password (kept under root) and the config files' wanted content."""
    secret = info.root / "db.secret"
    password = secret.read_text().strip() if secret.exists() else secrets.token_hex(16)
    return password, {SLURM_CONF: _slurm_conf(info), DBD_CONF: _dbd_conf(info, password)}


def up(root: Path | None = None, *, install: bool = True, timeout_s: float = 120) -> ClusterInfo:
    """Bring the local cluster up (or reuse the one that is up) and return what it is; LaunchError on failure."""
    info = _info(_root(root))
    deadline = time.monotonic() + timeout_s
    if _current(_confs(info)[1]) and not _missing_binaries() and _answering(info):
        return info
    reason = unavailable_reason()
    if reason:
        raise LaunchError(f"cannot start a local slurm cluster: {reason}")
    try:
        if _missing_binaries():
            if not install:
                raise LaunchError(
                    f"slurm packages missing ({', '.join(_missing_binaries())}) and install=False"
                )
            _install()
        for d in ("state", "spool", "log", "run"):
            (info.root / d).mkdir(parents=True, exist_ok=True)
        with open(info.root / "up.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent `up`s (parallel test sessions) start daemons once
            password, confs = _confs(info)  # after the lock: another `up` may have written the secret
            if _current(confs) and _answering(info):
                return info
            _start_all(info, password, confs, deadline)
    except OSError as e:  # a folder or file we cannot write, a binary we cannot run
        raise LaunchError(f"local slurm: {e}") from e
    log.info("cluster %r is up: node %s, %d CPUs, partition %r", CLUSTER, info.node, CPUS, PARTITION)
    return info


def _start_all(info: ClusterInfo, password: str, confs: dict[Path, str], deadline: float) -> None:
    """Write configs, (re)start what is not running, wait until jobs can run and be accounted."""
    _write(info.root / "db.secret", password + "\n", 0o600)
    if not _current(confs):  # daemons read their config only at start; stop them while the old config
        for daemon in DAEMONS:  # on disk still names their pid files
            _stop(info, daemon)
    changed = [p for p, text in confs.items() if _write(p, text, 0o600 if p == DBD_CONF else 0o644)]
    if changed:
        log.info("configuration written: %s", ", ".join(map(str, changed)))
    fresh = not (info.root / "state" / "job_state").exists() and _pid(info, "slurmctld") is None
    _ensure_munge(info, deadline)
    _ensure_mariadb(info, deadline, password, fresh)
    sacctmgr_ok = lambda: _run(["sacctmgr", "-n", "list", "cluster"], timeout=15).returncode == 0  # noqa: E731
    _start(info, "slurmdbd", deadline, sacctmgr_ok)
    _register_cluster()
    ctld_ok = lambda: "UP" in _run(["scontrol", "ping"], timeout=15).stdout  # noqa: E731
    _start(info, "slurmctld", deadline, ctld_ok)
    _start(info, "slurmd", deadline, lambda: _node_ready(info))
    _wait("sacct to answer", _sacct_ok, deadline, info.log_dir / "slurmdbd.log")


def down(root: Path | None = None) -> None:
    """Stop slurmd, slurmctld and slurmdbd (munge and MariaDB stay up); no-op when nothing runs."""
    info = _info(_root(root))
    for daemon in DAEMONS:
        _stop(info, daemon)


def _status(info: ClusterInfo) -> bool:
    for daemon in reversed(DAEMONS):
        pid = _pid(info, daemon)
        print(f"{daemon:10s} {f'pid {pid}' if pid else 'not running'}")
    state = _node_state(info.node) if not _missing_binaries() else ""
    print(f"{'node':10s} {info.node}: {state or 'unknown'}")
    ok = _answering(info) if state else False
    print(f"{'cluster':10s} {'up' if ok else 'not answering'} (root {info.root}, config {SLURM_CONF})")
    return ok


def main(argv: list[str] | None = None) -> int:
    """CLI: up | down | status."""
    parser = argparse.ArgumentParser(prog="python -m ablate.ops.local_slurm", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--root", type=Path, help=f"state/log folder (env {ENV_ROOT}; {DEFAULT_ROOT})")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install packages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="local_slurm: %(message)s")
    try:
        if args.command == "up":
            start = time.monotonic()
            info = up(args.root, install=not args.no_install, timeout_s=args.timeout)
            print(f"up in {time.monotonic() - start:.1f} s")
            for key, value in asdict(info).items():
                print(f"  {key}: {value}")
        elif args.command == "down":
            down(args.root)
            print("down")
        else:
            return 0 if _status(_info(_root(args.root))) else 1
    except LaunchError as e:
        print(f"local_slurm {args.command} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
