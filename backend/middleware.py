"""ASGI middleware of the API: request IDs (and their place in every log line), security headers,
and the early guard that refuses unauthenticated, under-privileged or oversized requests *before*
their body is read (under /api/ and the MONAI Label protocol's /monailabel/).

FastAPI parses a multipart body (spooling every file to disk) before any dependency runs, so the
role check of ``require_role`` alone would let anyone make the server read and store gigabytes. The
guard runs first: for mutating ``/api/`` requests it matches the route, reads the role that route's
``require_role`` dependencies demand, checks the bearer token against it and enforces the size cap
from ``Content-Length`` (and, for bodies without one, while they stream in).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import uuid
from typing import Any

import anyio
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.config import Settings
from backend.errors import DomainError, Forbidden, TooLarge, Unauthorized
from backend.security import ROLE_RANK, Principal, cached_principal
from backend.tables import Role

log = logging.getLogger("dualseg.api")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("dualseg_request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MONAILABEL_PREFIX = "/monailabel/"
GUARDED = ("/api/", MONAILABEL_PREFIX)  # the early guard's paths
# MONAI Label clients read FastAPI's {"detail": …}: the shape of this request's early answers
_DETAIL_SHAPE: contextvars.ContextVar[bool] = contextvars.ContextVar("dualseg_detail_shape", default=False)
BODY_SLACK = 1024 * 1024  # multipart framing around the files
SECURITY_HEADERS = (  # added to every answer that does not set them itself
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
)


# Request IDs in log lines ----------------------------------------------------------------------------
class RequestIdFormatter(logging.Formatter):
    """Wraps a handler's formatter and appends ``request_id=…`` to every line it formats."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        return f"{text} request_id={getattr(record, 'request_id', REQUEST_ID.get())}"


def install_log_context(level: str = "INFO") -> None:
    """Give every log record a ``request_id`` attribute and every API log line a ``request_id=`` field.

    Idempotent. Wraps the handlers uvicorn installed (access and error logs) and, when nothing handles
    the root logger, adds one stderr handler so that ``dualseg.*`` messages are formatted the same way.
    """
    old_factory = logging.getLogRecordFactory()
    if not getattr(old_factory, "_dualseg_request_id", False):

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = old_factory(*args, **kwargs)
            record.request_id = REQUEST_ID.get()
            return record

        factory._dualseg_request_id = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)
    root = logging.getLogger()
    if not root.handlers:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(stream)
        logging.getLogger("dualseg").setLevel(level.upper())
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler.formatter, RequestIdFormatter
            ):
                if type(handler).__module__.startswith("_pytest"):
                    continue  # leave pytest's capture handlers alone
                handler.setFormatter(RequestIdFormatter(handler.formatter))


def _json(
    status: int, code: str, message: str, extra: list[tuple[bytes, bytes]] | None = None
) -> tuple[Message, Message]:
    shape = {"detail": message} if _DETAIL_SHAPE.get() else {"error": {"code": code, "message": message}}
    body = json.dumps(shape).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    )


async def _respond(
    send: Send, status: int, code: str, message: str, close: bool = False, retry_after: int | None = None
) -> None:
    extra = [(b"connection", b"close")] if close else []
    if retry_after is not None:
        extra.append((b"retry-after", str(retry_after).encode()))
    if status == 401:
        extra.append((b"www-authenticate", b"Bearer"))
    start, body = _json(status, code, message, extra)
    await send(start)
    await send(body)


# Request ID + security headers -----------------------------------------------------------------------
class RequestContextMiddleware:
    """Outermost: X-Request-ID in (when well-formed) and out, security headers on every answer,
    ``Cache-Control: no-store`` on API JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        rid = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        is_api = scope["path"].startswith(GUARDED)
        rid_header = (b"x-request-id", rid.encode())

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # one pass over the raw headers (MutableHeaders scans them again for every header set)
                raw = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                present = {k.lower(): v for k, v in raw}
                raw.append(rid_header)
                raw += [h for h in SECURITY_HEADERS if h[0] not in present]
                if (
                    is_api
                    and b"cache-control" not in present
                    and present.get(b"content-type", b"").startswith(b"application/json")
                ):
                    raw.append((b"cache-control", b"no-store"))
                message["headers"] = raw
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            REQUEST_ID.reset(token)


# Early guard ---------------------------------------------------------------------------------------------
def required_role(route: Any) -> Role | None:
    """The highest role any ``require_role`` dependency of the route demands (None: public)."""
    found: list[Role] = []
    stack = [getattr(route, "dependant", None)]
    while stack:
        dep = stack.pop()
        if dep is None:
            continue
        role = getattr(dep.call, "required_role", None)
        if role is not None:
            found.append(role)
        stack.extend(dep.dependencies)
    return max(found, key=lambda r: ROLE_RANK[r]) if found else None


class _BodyTooLarge(Exception):
    pass


class EarlyGuardMiddleware:
    """Under /api/: bounded concurrency for every request; for POST/PUT/PATCH/DELETE also
    authentication and authorisation from the headers alone and the body size cap, all before the route
    (and FastAPI's body parser) runs."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_body = settings.max_upload_bytes + BODY_SLACK
        self._roles: dict[tuple[str | None, tuple[str, ...]], Role | None] = {}
        self._upload_slots = asyncio.Semaphore(settings.max_concurrent_uploads)
        self._request_slots = asyncio.Semaphore(settings.max_concurrent_requests)
        self.wait_s = settings.request_wait_s

    def _route_role(self, scope: Scope) -> tuple[bool, Role | None]:
        app = scope.get("app")
        for ctx in iter_route_contexts(getattr(app, "routes", [])):
            try:
                match, _ = ctx.matches(scope)
            except AttributeError:
                continue
            if match == Match.FULL:
                key = (ctx.path, tuple(sorted(ctx.methods or ())))
                if key not in self._roles:
                    self._roles[key] = required_role(ctx)
                return True, self._roles[key]
        return False, None

    def _authenticate(self, scope: Scope, token: str) -> Principal:
        from backend.api.deps import resolve_principal
        from backend.db import session_scope

        oidc = getattr(getattr(scope.get("app"), "state", None), "oidc", None)
        with session_scope(self.settings.resolved_database_url) as session:
            return resolve_principal(session, self.settings, token, oidc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED):
            await self.app(scope, receive, send)
            return
        _DETAIL_SHAPE.set(scope["path"].startswith(MONAILABEL_PREFIX))
        headers = Headers(scope=scope)
        mutating = scope["method"] in MUTATING
        needed: Role | None = None
        token = ""
        if mutating and self.settings.auth_enabled:
            matched, needed = self._route_role(scope)
            scheme, _, token = headers.get("authorization", "").partition(" ")
            token = token.strip()
            if needed is not None and (scheme.lower() != "bearer" or not token):
                from backend.api.deps import MISSING_TOKEN

                await _respond(send, 401, Unauthorized.code, MISSING_TOKEN, close=True)
                return
        upload = mutating and headers.get("content-type", "").startswith("multipart/")
        held: list[asyncio.Semaphore] = []

        def release() -> None:
            while held:
                held.pop().release()

        async def send_releasing(message: Message) -> None:
            # Once the answer starts, the work that needs a thread and a connection is over: a slow
            # client reading a large download must not keep a slot.
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            # Uploads are CPU- and disk-bound and hold a database connection while they are validated:
            # a few at once, the others wait unread. Every /api request then takes one of a bounded
            # number of slots (below the database pool size), so a burst queues here, holding neither a
            # thread nor a connection, instead of deadlocking the thread pool against the pool.
            for slots, what in (
                (self._upload_slots, "uploads") if upload else (None, ""),
                (self._request_slots, "requests"),
            ):
                if slots is None:
                    continue
                try:
                    if slots.locked():
                        await asyncio.wait_for(slots.acquire(), timeout=self.wait_s)
                    else:
                        await slots.acquire()  # free: no timer and no extra task (wait_for makes one)
                except TimeoutError:
                    release()
                    await _respond(
                        send,
                        503,
                        "busy",
                        f"too many {what} in progress; retry shortly",
                        close=True,
                        retry_after=5,
                    )
                    return
                held.append(slots)
            if not mutating:
                await self.app(scope, receive, send_releasing)
                return
            if needed is not None and not await self._authorise(scope, send_releasing, token, needed):
                return
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await _respond(
                    send_releasing,
                    413,
                    TooLarge.code,
                    f"the request body is {length} bytes; the limit is {self.max_body}",
                    close=True,
                )
                return
            await self._call_counting(scope, receive, send_releasing)
        finally:
            release()

    async def _authorise(self, scope: Scope, send: Send, token: str, needed: Role) -> bool:
        try:
            principal = cached_principal(self.settings.secret_key, token)
            if principal is None:
                principal = await anyio.to_thread.run_sync(self._authenticate, scope, token)
            if ROLE_RANK[principal.role] < ROLE_RANK[needed]:
                raise Forbidden(f"this needs the {needed.value} role; your token has {principal.role.value}")
        except DomainError as exc:
            await _respond(send, exc.status, exc.code, exc.message, close=True)
            return False
        except DBAPIError as exc:
            log.warning("database unavailable during authentication: %s", type(exc).__name__)
            await _respond(
                send,
                503,
                "database_unavailable",
                "the database is not reachable; try again shortly",
                close=True,
            )
            return False
        scope.setdefault("state", {})["principal"] = principal
        return True

    async def _call_counting(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count streamed body bytes; past the cap, stop reading and answer 413 instead."""
        seen = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to the aborted body is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await _respond(
                send,
                413,
                TooLarge.code,
                f"the request body exceeds the limit of {self.max_body} bytes",
                close=True,
            )
