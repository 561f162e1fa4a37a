"""The one gate every request to the team server passes, whatever framework MLflow serves
its route with: an ASGI middleware around MLflow's whole app (FastAPI, with Flask mounted in
it).

In order, for each request:

1. **Listed or refused.** Its method and path must be one of digitcnn.team.routes; any other
   route is answered 404 before MLflow sees it (deny by default).
2. **Who.** Except on public routes (health, the UI's files), basic-auth credentials are
   required; a user throttled for wrong passwords from this address gets 429; the password is
   checked against the user's current hash (digitcnn.team.passwords); a wrong one gets 401 and
   counts. MLflow's own basic-auth app then applies its permissions.
3. **What.** A writing request's JSON body must be a JSON object (else 400), and may neither
   take a name that is someone else's nor name one of the server's tags
   (digitcnn.team.rules): 403.
4. **The answer.** After MLflow created a run, an experiment, a logged model, a registered
   model or a model version, the server records its creator (digitcnn.team.creators). An
   answer of 500 and above says what failed in words, and one of 400 and above never carries
   the database's driver messages or SQL: those go to the server's log.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import urllib.parse

from anyio import to_thread

from digitcnn.core.errors import is_duplicate_key
from digitcnn.team import rules
from digitcnn.team.creators import Creators
from digitcnn.team.passwords import Passwords, Throttle
from digitcnn.team.routes import PUBLIC, WRITE, Route, RouteTable

log = logging.getLogger("digitcnn.team")
MAX_JSON_BYTES = 32 * 1024 * 1024  # a writing request's JSON body (log-batch allows 1,000 rows)
FAILED = "the server failed this request (its store may be unavailable)"
INVALID_HOST = "Invalid Host header - the server does not answer to this name"
STORE_REFUSED = "the store refused this request (the server's log has the details)"
# A unique key another request filled first (parallel jobs logging one dataset): the client
# must know it to link to that record, so the answer says so, in words of its own.
DUPLICATE_KEY = (
    "a parallel request recorded the same thing first (duplicate key); "
    "the server's log has the details"
)
# What only a database driver or SQLAlchemy writes: kept to the server's log.
DRIVER_WORDS = ("psycopg", "sqlalchemy", "sqlite3", "(Background on this error", "[SQL:")


class Gate:
    """ASGI middleware: `app` behind the checks above."""

    def __init__(self, app, users, throttle_file: str | None, routes: RouteTable | None = None):
        self.app = app
        self.routes = routes or RouteTable()
        self.passwords = Passwords(users)
        self.throttle = Throttle(throttle_file)
        self.creators = Creators()
        from mlflow.server.security_utils import get_allowed_hosts_from_env

        self.allowed_hosts = get_allowed_hosts_from_env()  # None: MLflow's defaults apply

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: no route of the list is one
            await send({"type": "websocket.close", "code": 1008})
            return
        if not _allowed_host(scope, self.allowed_hosts):  # DNS rebinding: before anything
            await _answer(send, 403, "PERMISSION_DENIED", INVALID_HOST)
            return
        route = self.routes.match(scope["method"], scope["path"])
        if route is None:
            await _answer(send, 404, "ENDPOINT_NOT_FOUND", "not served by this server")
            return
        if route.rule == PUBLIC:
            await self.app(scope, receive, _Answer(send, route, None, self.creators).send)
            return
        credentials = _basic_credentials(scope)
        if credentials is None:
            await _answer(send, 401, "UNAUTHENTICATED", "give a user and password",
                          {"WWW-Authenticate": 'Basic realm="mlflow"'})  # fmt: skip
            return
        user, password = credentials
        address = (scope.get("client") or ("",))[0]
        wait = await to_thread.run_sync(self.throttle.wait, user, address)
        if wait:
            await _answer(send, 429, "REQUEST_LIMIT_EXCEEDED", "too many wrong passwords",
                          {"Retry-After": str(wait)})  # fmt: skip
            return
        try:
            account = await to_thread.run_sync(self.passwords.check, user, password)
        except Exception as exc:  # the user store is away: said in words, details to the log
            log.error("checking a password failed: %s", exc)
            await _answer(send, 503, "TEMPORARILY_UNAVAILABLE", FAILED)
            return
        if account is None:
            await to_thread.run_sync(self.throttle.failed, user, address)
            await _answer(send, 401, "UNAUTHENTICATED", "wrong user or password",
                          {"WWW-Authenticate": 'Basic realm="mlflow"'})  # fmt: skip
            return
        if route.rule == WRITE:
            body = await _read_body(receive)
            if body is None:
                await _answer(send, 413, "INVALID_PARAMETER_VALUE", "the request is too large")
                return
            fields = _json_object(body)
            if fields is None:
                await _answer(
                    send, 400, "MALFORMED_REQUEST", "the request's body is not a JSON object"
                )
                return
            refused = _refusal(scope, route, fields, user, bool(account.is_admin))
            source_run = fields.get("source_run_id") if route.records == "logged_model" else None
            if refused is None and source_run and not account.is_admin:
                refused = await to_thread.run_sync(self._foreign_source, source_run, user)
            if refused is not None:
                await _answer(send, *refused)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _Answer(send, route, user, self.creators).send)

    def _foreign_source(self, run_id: str, user: str):
        """A logged model that claims to come from a run another user created is refused: the
        run it names is part of the record predict and evaluate show."""
        owner = self.creators.run_owner(run_id)
        if owner is None or owner == user:
            return None
        reason = f"run {run_id} is {owner}'s: a logged model of yours comes from a run of yours"
        return 403, "PERMISSION_DENIED", reason


def _allowed_host(scope, allowed: list[str] | None) -> bool:
    """Whether the request's Host header is one the server was told it has (MLflow's check,
    done here first so that a page on a foreign name never gets a password prompt); health
    checks are exempt, as in MLflow."""
    from mlflow.server.security_utils import is_allowed_host_header, is_health_endpoint

    if allowed is None or is_health_endpoint(scope["path"]) or scope["path"] == "/health/ready":
        return True
    host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
    return is_allowed_host_header(allowed, host)


def _json_object(body: bytes) -> dict | None:
    """A writing request's body as a JSON object ({} when empty); None when it is not one."""
    if not body.strip():
        return {}
    try:
        fields = json.loads(body)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


def _refusal(scope, route: Route, fields: dict, user: str, is_admin: bool):
    """(status, error code, message) refusing a writing request (`fields`: its body), or None."""
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    reason = rules.refusal(route.names, fields, query, scope["path"], user, is_admin)
    return (403, "PERMISSION_DENIED", reason) if reason else None


def _basic_credentials(scope) -> tuple[str, str] | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() != "basic":
                return None
            try:
                user, colon, password = (
                    base64.b64decode(token, validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                return None
            return (user, password) if colon and user else None
    return None


async def _read_body(receive) -> bytes | None:
    """The whole body; None past MAX_JSON_BYTES."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that gives the app the body read already, then waits as the server's."""
    given = False

    async def again():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _answer(send, status: int, code: str, message: str, headers: dict | None = None):
    body = json.dumps({"error_code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class _Answer:
    """MLflow's answer on its way out: errors rewritten, creations recorded. An answer is held
    whole only when it is an error or a creation (small JSON); others stream through."""

    def __init__(self, send, route: Route, user: str | None, creators: Creators) -> None:
        self._send, self.route, self.user, self.creators = send, route, user, creators
        self.start: dict | None = None
        self.chunks: list[bytes] = []

    def _held(self, status: int) -> bool:
        return status >= 400 or (self.route.records is not None and status == 200)

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            if not self._held(message["status"]):
                await self._send(message)
                return
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        await self._finish(b"".join(self.chunks))

    async def _finish(self, body: bytes) -> None:
        status = self.start["status"]
        headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
        if status == 200:  # a creation
            try:
                answer = json.loads(body)
                await to_thread.run_sync(
                    self.creators.record, self.route.records, answer, self.user
                )
            except Exception as exc:  # it exists: say so in the log, the client gets it
                log.error("could not record who created a %s: %s", self.route.records, exc)
        else:
            body, headers = _kept_to_log(status, body, headers)
        await self._send({**self.start, "headers": [
            *headers, (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await self._send({"type": "http.response.body", "body": body})


def _kept_to_log(status: int, body: bytes, headers: list) -> tuple[bytes, list]:
    """An error's body without what belongs in the server's log (500 and above: all of it;
    below: a database driver's message), a unique key's violation still named as such."""
    text = body.decode(errors="replace")
    if status < 500 and not any(word in text for word in DRIVER_WORDS):
        return body, headers
    log.error("answered %d: %s", status, text[:2000])
    code, message = ("INTERNAL_ERROR", FAILED) if status >= 500 else ("BAD_REQUEST", STORE_REFUSED)
    if is_duplicate_key(text):
        message = DUPLICATE_KEY
    with contextlib.suppress(ValueError, AttributeError):  # MLflow's code, when it gave one
        code = json.loads(body).get("error_code") or code
    headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
    return (
        json.dumps({"error_code": code, "message": message}).encode(),
        [*headers, (b"content-type", b"application/json")],
    )
