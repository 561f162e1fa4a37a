"""A one-node Slurm for the tests, from Debian's packages (`munge slurmctld slurmd slurm-client
slurmdbd mariadb-server-core`), started as root in a throwaway folder: munged, MariaDB with
slurmdbd (submitit learns that a job was cancelled only from `sacct`), slurmctld and slurmd,
each on its own socket or free port, so it shares nothing with a Slurm the machine may run.

Two partitions: `low` (the default; its jobs are requeued when preempted, after a grace
period, and told so by their user signal first) and `high`, whose jobs preempt `low`'s.
Commands reach it through `SLURM_CONF` (`env`). See ../shared/FACTS.md for what each setting
is for; `close` stops every daemon and removes the folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd", "mariadb-install-db")
START_SECONDS = 60  # the most any daemon is waited for


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "the one-node Slurm runs as root"
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (apt-get install munge slurmctld slurmd " \
               "slurm-client slurmdbd mariadb-server-core)"  # fmt: skip
    return None


def _wait(what: str, ready, timeout: float = START_SECONDS, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s\n{tail}")


class SlurmCluster:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="digitcnn-slurm-"))
        self.folder.chmod(0o755)  # munged refuses a socket folder others cannot enter
        self.conf = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"
        self._pids: list[Path] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def env(self) -> dict[str, str]:
        """What a process that runs Slurm's commands on this cluster needs in its environment."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm command (`sbatch`, `scontrol`, ...) on this cluster."""
        return subprocess.run(
            cmd, env=os.environ | self.env, capture_output=True, text=True, check=check,
            timeout=30,
        )  # fmt: skip

    def _start(self) -> None:
        f = self.folder
        for name in ("munge", "state", "spool", "mysql"):
            (f / name).mkdir(mode=0o755)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        subprocess.run(
            ["munged", "--key-file", str(key), "--socket", str(self.munge_socket),
             "--pid-file", str(f / "munge" / "munged.pid"), "--log-file", str(f / "munge.log"),
             "--seed-file", str(f / "munge" / "seed"), "--force"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self._pids.append(f / "munge" / "munged.pid")

        db_port, dbd_port, ctld_port, d_port = (free_port() for _ in range(4))
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={f / 'mysql'}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={f / 'mysql'}", "--user=root",
             "--bind-address=127.0.0.1", f"--port={db_port}", f"--socket={f / 'mysql.sock'}",
             f"--pid-file={f / 'mariadb.pid'}", f"--log-error={f / 'mariadb.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self._pids.append(f / "mariadb.pid")
        _wait("MariaDB", lambda: (f / "mysql.sock").exists(), log=f / "mariadb.log")

        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket},cred_expire=10\n"
        dbd_conf = f / "slurmdbd.conf"
        dbd_conf.write_text(
            f"{auth}DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\nSlurmUser=root\n"
            f"PidFile={f / 'slurmdbd.pid'}\nLogFile={f / 'slurmdbd.log'}\n"
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={db_port}\nStorageUser=root\nStorageLoc=slurm_acct_db\n"
        )
        dbd_conf.chmod(0o600)
        self.conf.write_text(
            "ClusterName=digitcnn\nSlurmctldHost=localhost(127.0.0.1)\n"
            f"SlurmctldPort={ctld_port}\nSlurmdPort={d_port}\nSlurmUser=root\nSlurmdUser=root\n"
            f"{auth}CredType=cred/munge\n"
            f"StateSaveLocation={f / 'state'}\nSlurmdSpoolDir={f / 'spool'}\n"
            f"SlurmctldPidFile={f / 'slurmctld.pid'}\nSlurmdPidFile={f / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={f / 'slurmctld.log'}\nSlurmdLogFile={f / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=localhost\nAccountingStoragePort={dbd_port}\n"
            f"AccountingStoragePass={self.munge_socket}\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n"
            "SchedulerParameters=sched_interval=5,bf_interval=5\n"
            # KillWait: Slurm's default, as on clusters; a stopped job closes its run within
            # digitcnn's 15 s grace (a shorter one would kill a job that closes slowly)
            "MinJobAge=3600\nKillWait=30\nMailProg=/bin/true\nReturnToService=2\n"
            "PreemptType=preempt/partition_prio\nPreemptMode=REQUEUE\n"
            "SlurmctldParameters=preempt_send_user_signal\n"
            "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 Sockets=1 CoresPerSocket=2 "
            "ThreadsPerCore=1 RealMemory=4096 State=UNKNOWN\n"
            "PartitionName=low Nodes=localhost Default=YES MaxTime=INFINITE State=UP "
            "PriorityTier=1 PreemptMode=REQUEUE GraceTime=20 OverSubscribe=NO\n"
            "PartitionName=high Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 "
            "PreemptMode=OFF\n"
        )
        env = os.environ | self.env
        subprocess.run(["slurmdbd"], env=env, check=True, capture_output=True, timeout=60)
        self._pids.append(f / "slurmdbd.pid")
        _wait("slurmdbd", lambda: _listening(dbd_port), log=f / "slurmdbd.log")
        subprocess.run(["slurmctld"], env=env, check=True, capture_output=True, timeout=60)
        self._pids.append(f / "slurmctld.pid")
        subprocess.run(
            ["slurmd", "-N", "localhost"], env=env, check=True, capture_output=True, timeout=60
        )
        self._pids.append(f / "slurmd.pid")
        _wait("the node", self._node_idle, log=f / "slurmctld.log")

    def _node_idle(self) -> bool:
        answer = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return answer.returncode == 0 and answer.stdout.strip().startswith("idle")

    def jobs(self) -> list[str]:
        """`squeue`'s lines for the jobs not ended: job id, state, restarts, name."""
        return self.run("squeue", "-h", "-o", "%i %T %r %j").stdout.split("\n")[:-1]

    def close(self) -> None:
        for pid_file in reversed(self._pids):  # slurmd first, munged last
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (a daemon we started and did not reap) is gone for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
