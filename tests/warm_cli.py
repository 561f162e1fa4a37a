"""The suite's CLI processes, forked from a warm interpreter instead of started cold.

Each `python -m digitcnn.run ...` a test starts spends about 5 of its 11 CPU-seconds importing
TensorFlow, Keras, Hydra and the plotting libraries, before digitcnn does anything; the suite
starts some 250 of them on two cores. A warm interpreter (one per test process, started on
first use) imports those libraries once, as digitcnn imports them (C++ notices hidden,
`TF_CPP_MIN_LOG_LEVEL` set, nothing initialised), then forks a child per command. The child
takes the command's standard streams, folder, environment and process group, and runs the
module as `python -m` does, to a normal interpreter exit (atexit handlers, threads joined):
a real process with its own pid, signals and exit status. digitcnn itself is imported fresh in
every child.

What a fork cannot show is the cold start itself: a backend chosen by `backend=` or
`KERAS_BACKEND`, what the imports print, a command whose imports a test changes
(`PYTHONPATH`). Those commands, tests marked `fresh_interpreter`, and every command when
`DIGITCNN_TEST_FRESH_INTERPRETER=1` is set start a new interpreter as before (`tests/conftest.py`
decides). Linux only (forks, SOCK_SEQPACKET); elsewhere every command starts cold.

Run as a script, this file is the warm interpreter: `python tests/warm_cli.py SOCKET`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_FDS = 3  # the child's stdin, stdout, stderr


# --- the warm interpreter ------------------------------------------------------------------


def _preload() -> None:
    """What every training command imports, imported as digitcnn imports it."""
    from digitcnn.core.runtime import import_keras_quietly  # sets TF_CPP_MIN_LOG_LEVEL first

    import_keras_quietly()
    import matplotlib

    matplotlib.use("Agg")
    import hydra  # noqa: F401
    import matplotlib.pyplot
    import omegaconf  # noqa: F401
    import seaborn  # noqa: F401
    import sklearn.metrics  # noqa: F401


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
                client.send(str(os.waitstatus_to_exitcode(status)).encode())
            client.close()


def _serve(listener: socket.socket) -> dict:
    """Fork a child per request until the test process closes our stdin. Returns only in a
    child, with its request, its descriptors in place and nothing of the server left open."""
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
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
        _reap(waiting)
        if 0 in ready and not os.read(0, 512):
            sys.exit(0)  # the test process is gone
        if listener not in ready:
            continue
        client, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(client, 1 << 20, _FDS)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for open_socket in (listener, client, *waiting.values()):
                open_socket.close()
            os.close(wake_read)
            os.close(wake_write)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            return json.loads(message)
        for fd in fds:
            os.close(fd)
        client.send(str(pid).encode())
        waiting[pid] = client


def _run_as_main(request: dict) -> None:
    """`python -m MODULE ARGS` in the command's folder, environment and process group."""
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # as `python -m` puts it
    sys.argv = [request["module"], *request["args"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


# --- the test process's side ---------------------------------------------------------------


class WarmInterpreter:
    """One warm interpreter and the socket it listens on; `start` forks a command from it."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
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
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the warm interpreter did not start: {self.log.read_text()}")
            time.sleep(0.05)

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
        conn.connect(self.socket_path)
        stdin = os.open(os.devnull, os.O_RDONLY)
        try:
            socket.send_fds(conn, [json.dumps(request).encode()], [stdin, stdout, stderr])
        finally:
            os.close(stdin)
        return int(conn.recv(64)), conn

    def close(self) -> None:
        self.server.stdin.close()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


def _text(data: bytes) -> str:
    """Bytes read from a pipe, as Popen's text mode gives them (universal newlines)."""
    return io.TextIOWrapper(io.BytesIO(data)).read()


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
        finally:
            os.close(out_write)
            if not merged:
                os.close(err_write)
        self.stdout = open(out_read, encoding="utf-8", errors="strict")  # noqa: SIM115
        self.stderr = None if merged else open(err_read, encoding="utf-8")  # noqa: SIM115
        self._read: dict[int, bytearray] = {}

    def poll(self) -> int | None:
        if self.returncode is None:
            self._status.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                self._ended(self._status.recv(64))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._status.setblocking(True)
            self._status.settimeout(timeout)
            try:
                self._ended(self._status.recv(64))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def _ended(self, message: bytes) -> None:
        self.returncode = int(message)
        self._status.close()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """Read the pipes to their end and wait, as Popen.communicate does; a timeout leaves
        what was read for the next call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        streams = [s for s in (self.stdout, self.stderr) if s is not None and not s.closed]
        with selectors.DefaultSelector() as selector:
            for stream in streams:
                self._read.setdefault(stream.fileno(), bytearray())
                selector.register(stream.fileno(), selectors.EVENT_READ)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 1 << 16)
                    if chunk:
                        self._read[key.fd] += chunk
                    else:
                        selector.unregister(key.fd)
        texts = []
        for stream in (self.stdout, self.stderr):
            if stream is None:
                texts.append(None)
                continue
            if not stream.closed:
                texts.append(_text(bytes(self._read.pop(stream.fileno(), b""))))
                stream.close()
            else:
                texts.append("")
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return texts[0], texts[1]


if __name__ == "__main__":
    _preload()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(sys.argv[1] + ".new")
    server.listen(64)
    os.rename(sys.argv[1] + ".new", sys.argv[1])  # whole once it is there
    _run_as_main(_serve(server))
