"""Who a request is, and how many wrong passwords it may try: the gate's checks of a
request's basic-auth credentials (digitcnn.team.gate).

A password is checked against the user's current hash, read from the user store on every
request (one indexed row): a changed password is refused by every worker at once. The slow
hash is computed once per (user, password, current hash) and remembered. A user that does not
exist costs the same slow hash as a wrong password (against a hash of nothing), so the answer's
time does not say which user names exist.

After THROTTLE_LIMIT wrong passwords for one user from one address within THROTTLE_SECONDS,
that user is refused from that address for the rest of the window, right password or not: the
count is shared by the server's workers through a SQLite file in the server's private folder
(DIGITCNN_TEAM_THROTTLE, set by digitcnn.team_server). The address is the connection's; a
proxy's forwarded address counts only from the proxies given to the server with
`--trusted-proxies`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
import time

log = logging.getLogger("digitcnn.team")
THROTTLE_LIMIT = 5
THROTTLE_SECONDS = 60
REMEMBERED = 4096  # checked (user, password, hash) triples a worker keeps


class Passwords:
    """Checks credentials against MLflow's user store (`users`: its SqlAlchemyStore)."""

    def __init__(self, users) -> None:
        from werkzeug.security import generate_password_hash

        self.users = users
        self._nobody = generate_password_hash("", method=_method(users))
        self._checked: dict[bytes, None] = {}
        self._lock = threading.Lock()

    def check(self, user: str, password: str):
        """The user (MLflow's User, with `is_admin`) if `password` is theirs, else None."""
        from mlflow.exceptions import MlflowException
        from werkzeug.security import check_password_hash

        try:
            account = self.users.get_user(user)
        except MlflowException as exc:  # no such user; a store that failed raises on
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            check_password_hash(self._nobody, password)  # the time a known user costs
            return None
        key = hashlib.sha256(
            b"\0".join(s.encode() for s in (user, password, account.password_hash))
        ).digest()
        if key in self._checked:
            return account
        if not check_password_hash(account.password_hash, password):
            return None
        with self._lock:
            if len(self._checked) >= REMEMBERED:
                self._checked.pop(next(iter(self._checked)))
            self._checked[key] = None
        return account


def _method(users) -> str:
    """The hash method of the store's admin (what MLflow uses for every user), else
    werkzeug's default: a user that does not exist must cost what one that does costs."""
    try:
        for account in users.list_users():
            return account.password_hash.split("$", 1)[0]
    except Exception:
        pass
    return "scrypt"


class Throttle:
    """Wrong passwords per (user, address) in the last THROTTLE_SECONDS, in a SQLite file
    that the server's workers share; without one (a server not started by
    digitcnn.team_server), nothing is counted."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        if path is None:
            log.warning("DIGITCNN_TEAM_THROTTLE is not set: wrong passwords are not throttled")
            return
        with contextlib.closing(self._db()) as db:  # once per worker, not per request
            db.execute("CREATE TABLE IF NOT EXISTS failures (user TEXT, address TEXT, at REAL)")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def wait(self, user: str, address: str) -> int:
        """Seconds until `user` may try again from `address` (0: now)."""
        if self.path is None:
            return 0
        since = time.time() - THROTTLE_SECONDS
        with contextlib.closing(self._db()) as db:
            times = db.execute(
                "SELECT at FROM failures WHERE user = ? AND address = ? AND at > ? ORDER BY at",
                (user, address, since),
            ).fetchall()
        if len(times) < THROTTLE_LIMIT:
            return 0
        return max(1, round(times[-THROTTLE_LIMIT][0] - since))

    def failed(self, user: str, address: str) -> None:
        if self.path is None:
            return
        now = time.time()
        with contextlib.closing(self._db()) as db:
            db.execute("DELETE FROM failures WHERE at < ?", (now - THROTTLE_SECONDS,))
            db.execute("INSERT INTO failures VALUES (?, ?, ?)", (user, address, now))
