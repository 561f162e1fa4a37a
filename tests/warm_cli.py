"""The suite's CLI processes, forked from a warm interpreter instead of started cold.

Each `python -m digitcnn.run ...` a test starts spends about 5 of its 11 CPU-seconds importing
TensorFlow, Keras, Hydra and the plotting libraries, before digitcnn does anything; the suite
starts some 250 of them on two cores. A warm interpreter (one per test process, started on
first use) imports those libraries once, as digitcnn imports them (through
`digitcnn.core.runtime.import_keras_quietly`: C++ notices hidden, `TF_CPP_MIN_LOG_LEVEL` set,
no TensorFlow context made), then forks a child per command. The child takes the command's
standard streams, folder, environment and process group, and runs the module as `python -m`
does, to a normal interpreter exit (atexit handlers, threads joined): a real process with its
own pid, signals and exit status. MLflow and its SQL store are imported too: a single run's
recorder process is forked from the command (digitcnn/tracking/recorder_start.py), a sweep
records from it; so are Optuna and its plots, which every search's commands import. Of digitcnn
only the package and `digitcnn.core.runtime` are imported before the fork; the rest is imported
by each child. What was imported is then frozen (`gc.freeze`): no child's garbage collector
walks it.

What a fork cannot show is the cold start itself: a backend chosen by `backend=` or
`KERAS_BACKEND`, what the imports print, a command whose imports a test changes
(`PYTHONPATH`), Keras imported before digitcnn chose its backend. Those commands, tests marked
`fresh_interpreter`, and every command when `DIGITCNN_TEST_FRESH_INTERPRETER=1` is set start a
new interpreter as before (`tests/conftest.py` decides; `tests/test_backends.py` and one stop
test always start cold). So does every command on a machine whose TensorFlow sees a GPU (a
forked child could not use CUDA the parent opened), and off Linux (forks, SOCK_SEQPACKET).

Run as a script, this file is the warm interpreter: `python tests/warm_cli.py SOCKET`.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import locale
import os
import runpy
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_FDS = 3  # the child's stdin, stdout, stderr
GPU_SEEN_EXIT = 3  # the warm interpreter's exit status where TensorFlow sees a GPU


# --- the warm interpreter ------------------------------------------------------------------


def _preload() -> bool:
    """Import what every training command imports, as digitcnn imports it; False where
    TensorFlow sees a GPU (CUDA, once opened, is of no use to a forked child)."""
    from digitcnn.core.runtime import import_keras_quietly  # sets TF_CPP_MIN_LOG_LEVEL first

    import_keras_quietly()
    import matplotlib

    matplotlib.use("Agg")
    import hydra  # noqa: F401
    import matplotlib.pyplot
    import mlflow.pyfunc  # a single run's recorder is forked from the command
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (a sweep records in it)
    import omegaconf  # noqa: F401
    import optuna.visualization.matplotlib  # noqa: F401  (a search's, and its report's plots)
    import seaborn  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def _reap(waiting: dict[int, socket.socket]) -> None:
    """Tell each ended child's client its exit status (as Popen.returncode reads it)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        client = waiting.pop(pid, None)
        if client is not None:
            with contextlib.suppress(OSError):  # the test process let go of it
                client.send(f"exit:{os.waitstatus_to_exitcode(status)}".encode())
            client.close()


def _serve(listener: socket.socket) -> tuple[dict, socket.socket]:
    """Fork a child per request until the test process closes our stdin. Returns only in a
    child: its request, and the connection on which it says its pid, with its descriptors in
    place and nothing else of the server left open. A request that fails is dropped alone."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    waiting: dict[int, socket.socket] = {}
    while True:
        try:
            ready, _, _ = select.select([listener, wake_read, 0], [], [])
        except InterruptedError:
            continue
        if wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_read, 512):
                    pass
        _reap(waiting)
        if 0 in ready and not os.read(0, 512):
            sys.exit(0)  # the test process is gone
        if listener not in ready:
            continue
        client, _ = listener.accept()
        fds: list[int] = []
        try:
            message, fds, _, _ = socket.recv_fds(client, 1 << 20, _FDS)
            request = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except (OSError, ValueError) as exc:  # a client gone, a fork refused: this one only
            print(f"request dropped: {exc!r}", file=sys.stderr)
            client.close()
            for fd in fds:
                os.close(fd)
            continue
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for open_socket in (listener, *waiting.values()):
                open_socket.close()
            os.close(wake_read)
            os.close(wake_write)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            return request, client
        for fd in fds:
            os.close(fd)
        waiting[pid] = client


def _run_as_main(request: dict, client: socket.socket) -> None:
    """`python -m MODULE ARGS` in the command's folder, environment and process group; the
    pid is told once the process is in its group, so a signal to the group reaches it."""
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # chosen again from this environment's TMPDIR
    sys.path.insert(0, os.getcwd())  # as `python -m` puts it
    sys.argv = [request["module"], *request["args"]]
    client.send(f"pid:{os.getpid()}".encode())
    client.close()
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


# --- the test process's side ---------------------------------------------------------------


class WarmInterpreterUnavailable(RuntimeError):
    """The warm interpreter cannot serve here (TensorFlow sees a GPU); start commands cold."""


class WarmInterpreter:
    """One warm interpreter and the socket it listens on (in `folder`, which it removes when
    closed); `start` forks a command from it."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.socket_path = str(folder / "warm.sock")
        self.log = folder / "warm.log"
        with open(self.log, "wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-u", __file__, self.socket_path],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                env=env | {"PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 120
        while not os.path.exists(self.socket_path):
            if self.server.poll() == GPU_SEEN_EXIT:
                self.close()
                raise WarmInterpreterUnavailable("TensorFlow sees a GPU")
            if self.server.poll() is not None or time.monotonic() > deadline:
                log_text = self.log.read_text()
                self.close()
                raise RuntimeError(f"the warm interpreter did not start: {log_text}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.server.poll() is None

    def start(
        self,
        module: str,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        stdout: int,
        stderr: int,
        new_session: bool = False,
    ) -> tuple[int, socket.socket]:
        """Fork `python -m MODULE ARGS` with these descriptors; its pid and the connection
        on which its exit status arrives."""
        request = {"module": module, "args": args, "cwd": str(cwd), "env": env,
                   "new_session": new_session}  # fmt: skip
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.settimeout(60)
            conn.connect(self.socket_path)
            stdin = os.open(os.devnull, os.O_RDONLY)
            try:
                socket.send_fds(conn, [json.dumps(request).encode()], [stdin, stdout, stderr])
            finally:
                os.close(stdin)
            said = conn.recv(64).decode()
        except BaseException:
            conn.close()
            raise
        if not said.startswith("pid:"):
            conn.close()
            raise RuntimeError(f"the warm interpreter did not start {args}: {said!r}; its log: "
                               f"{self.log.read_text()[-2000:]}")  # fmt: skip
        return int(said.removeprefix("pid:")), conn

    def close(self) -> None:
        if self.server.stdin and not self.server.stdin.closed:
            self.server.stdin.close()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_ENCODING = locale.getpreferredencoding(False)  # what Popen's text mode decodes with


def _text(data: bytes) -> str:
    """Bytes read from a pipe, as Popen's text mode gives them (universal newlines)."""
    return io.TextIOWrapper(io.BytesIO(data), encoding=_ENCODING).read()


class WarmProcess:
    """What the tests use of subprocess.Popen (pid, stdout, poll, wait, communicate, signals),
    for a command forked from the warm interpreter. `merged`: stderr goes to stdout's pipe."""

    def __init__(
        self,
        warm: WarmInterpreter,
        module: str,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        merged: bool,
        new_session: bool = False,
    ) -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.returncode: int | None = None
        out_read, out_write = os.pipe()
        err_read, err_write = (None, out_write) if merged else os.pipe()
        try:
            self.pid, self._status = warm.start(
                module, args, cwd, env, out_write, err_write, new_session
            )
        except BaseException:
            for fd in (out_read, err_read):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            os.close(out_write)
            if not merged:
                os.close(err_write)
        self.stdout = open(out_read, encoding=_ENCODING)  # noqa: SIM115
        self.stderr = None if merged else open(err_read, encoding=_ENCODING)  # noqa: SIM115
        self._read: dict[int, bytearray] = {}

    def poll(self) -> int | None:
        if self.returncode is None:
            self._status.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                self._ended(self._status.recv(64))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if timeout is not None and timeout <= 0:
                if self.poll() is None:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                return self.returncode
            self._status.setblocking(True)
            self._status.settimeout(timeout)
            try:
                self._ended(self._status.recv(64))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def _ended(self, message: bytes) -> None:
        said = message.decode()
        if not said.startswith("exit:"):  # the warm interpreter itself ended
            raise RuntimeError(f"no exit status for {self.args}: {said!r}")
        self.returncode = int(said.removeprefix("exit:"))
        self._status.close()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile, as Popen
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """Read the pipes to their end and wait, as Popen.communicate does; a timeout leaves
        what was read for the next call, and carries it, as Popen's does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        streams = [s for s in (self.stdout, self.stderr) if s is not None and not s.closed]
        with selectors.DefaultSelector() as selector:
            for stream in streams:
                self._read.setdefault(stream.fileno(), bytearray())
                selector.register(stream.fileno(), selectors.EVENT_READ)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise self._timed_out(timeout)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 1 << 16)
                    if chunk:
                        self._read[key.fd] += chunk
                    else:
                        selector.unregister(key.fd)
        try:
            self.wait(None if deadline is None else deadline - time.monotonic())
        except subprocess.TimeoutExpired:
            raise self._timed_out(timeout) from None
        texts: list[str | None] = []
        for stream in (self.stdout, self.stderr):
            if stream is None:
                texts.append(None)
            elif stream.closed:
                texts.append("")
            else:
                texts.append(_text(bytes(self._read.pop(stream.fileno(), b""))))
                stream.close()
        return texts[0], texts[1]

    def _timed_out(self, timeout: float | None) -> subprocess.TimeoutExpired:
        out, err = (
            bytes(self._read.get(s.fileno(), b"")) if s is not None and not s.closed else None
            for s in (self.stdout, self.stderr)
        )
        return subprocess.TimeoutExpired(self.args, timeout, output=out, stderr=err)


if __name__ == "__main__":
    sys.path.pop(0)  # this folder: nothing of the tests' is imported here
    if not _preload():
        sys.exit(GPU_SEEN_EXIT)
    # What the children inherit is left out of their garbage collector, which would otherwise
    # walk every object of TensorFlow, Keras and MLflow in each command (and copy each page it
    # touched): 11% less CPU for `pytest -n 1 tests/test_reliability.py`, measured.
    gc.collect()
    gc.freeze()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(sys.argv[1] + ".new")
    server.listen(64)
    os.rename(sys.argv[1] + ".new", sys.argv[1])  # whole once it is there
    _run_as_main(*_serve(server))
