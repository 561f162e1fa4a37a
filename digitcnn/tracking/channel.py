"""Messages between a training process and its recorder process: pickles, length-prefixed,
over a socket pair. A stop signal (Ctrl-C, SIGTERM, SIGHUP) garbles nothing: it can interrupt
a read or a send only while no bytes move; what was received waits for the next read, what is
left to send goes out first with the next send."""

from __future__ import annotations

import pickle
import select
import signal
import socket
import time
from typing import Any

_HEADER = 8  # bytes of length before each message
_STOPS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # see digitcnn.core.stops


class ChannelClosed(EOFError):
    """The other process closed its end (it ended, or was killed)."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._received = bytearray()
        self._unsent = bytearray()

    def send(self, message: Any) -> None:
        """Queue `message`, then send what is queued (`queue`, then `flush`)."""
        self.queue(message)
        self.flush()

    def queue(self, message: Any) -> None:
        """Add `message` to what is to be sent: from here on it will go out whole, with this
        or the next send, even if a signal interrupts `flush`."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._unsent += len(payload).to_bytes(_HEADER, "big") + payload

    def flush(self) -> None:
        """Send what is queued."""
        while self._unsent:
            select.select([], [self.sock], [])  # interruptible: nothing moves while waiting
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
            try:  # sent and forgotten together, or neither
                sent = self.sock.send(self._unsent, socket.MSG_DONTWAIT)
                del self._unsent[:sent]
            except BlockingIOError:
                pass
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def receive(self, wait: bool = True, timeout: float | None = None) -> Any:
        """The next message; None when none has arrived whole yet: at once with
        `wait=False`, after `timeout` seconds otherwise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            buffered = self._received
            if len(buffered) >= _HEADER:
                end = _HEADER + int.from_bytes(buffered[:_HEADER], "big")
                if len(buffered) >= end:
                    message = pickle.loads(buffered[_HEADER:end])
                    del buffered[:end]
                    return message
            if wait and deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    return None
            try:
                chunk = self.sock.recv(1 << 20, 0 if wait else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ChannelClosed("the other process closed the channel")
            buffered += chunk

    def close(self) -> None:
        self.sock.close()
