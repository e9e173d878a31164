"""A lean route type for inbound channel webhooks, the hub's hottest path.

A webhook endpoint needs the raw body, headers, query and path parameters, and answers
small JSON. Litestar's request machinery (middleware, router, dependency injection, signature
models, response objects) costs more CPU than the whole ingest work; these handlers are
dispatched as plain ASGI before Litestar sees the request, with the hub's body limit and
error format.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import msgspec
import structlog

from omni_core.errors import RETRY_AFTER_S, STORE_UNAVAILABLE, ApiError

if TYPE_CHECKING:
    from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

    from omni_core.hub import Hub

log = structlog.get_logger("omni.webhooks")
_encode = msgspec.json.Encoder().encode


class WebhookRequest:
    """What a webhook handler gets: method, path parameters, headers (lower-case names), query, raw body."""

    __slots__ = ("body", "headers", "method", "path", "path_params", "query")

    def __init__(
        self,
        method: str,
        path: str,
        path_params: dict[str, Any],
        headers: dict[str, str],
        query: dict[str, str],
        body: bytes,
    ) -> None:
        self.method = method
        self.path = path
        self.path_params = path_params
        self.headers = headers
        self.query = query
        self.body = body


#: A webhook handler answers (status, JSON-able body); it raises ApiError for client errors.
WebhookHandler = Callable[["Hub", WebhookRequest], Awaitable[tuple[int, Any]]]

_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


class WebhookRoute:
    """A webhook endpoint a plugin returns from ``omni_routes``; the core mounts it."""

    __slots__ = ("handler", "methods", "name", "path", "pattern", "prefix")

    def __init__(self, path: str, handler: WebhookHandler, name: str, methods: Sequence[str]) -> None:
        self.path = path.rstrip("/") or "/"
        self.handler = handler
        self.name = name
        self.methods = frozenset(m.upper() for m in methods)
        first = self.path.find("{")
        static = self.path if first < 0 else self.path[:first]
        self.prefix = static.rstrip("/") or "/"
        rest = self.path[len(self.prefix) :]
        regex = _PARAM.sub(
            lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(rest).replace(r"\{", "{").replace(r"\}", "}")
        )
        self.pattern = re.compile(f"^{regex}/?$")


def webhook_route(path: str, handler: WebhookHandler, *, name: str, methods: Sequence[str] = ("POST",)) -> WebhookRoute:
    """A webhook endpoint at ``path`` (path parameters as ``{name}`` or ``{name:str}``)."""
    return WebhookRoute(path, handler, name, methods)


class WebhookDispatcher:
    """Runs webhook routes ahead of Litestar's router (see :class:`omni_core.app.HubApp`).

    Each static prefix owns its whole subtree, as a mount would: a path under it that no route
    matches is answered 404 here, in the hub's error format. Litestar's per-request layers
    (exception middleware, router, mount handling) cost about a quarter of an acknowledged
    webhook's CPU while adding nothing these handlers use, so they are skipped.
    """

    __slots__ = ("_hub", "_mounts")

    def __init__(self, hub: Hub, routes: Sequence[WebhookRoute]) -> None:
        self._hub = hub
        by_prefix: dict[str, list[WebhookRoute]] = {}
        for route in routes:
            by_prefix.setdefault(route.prefix, []).append(route)
        # Longest prefix first, so /webhooks/x/y wins over /webhooks/x for paths under both.
        self._mounts = sorted(by_prefix.items(), key=lambda item: len(item[0]), reverse=True)

    def find(self, path: str) -> tuple[str, list[WebhookRoute]] | None:
        """The (prefix, routes) owning ``path``, or None when no webhook prefix covers it."""
        for prefix, routes in self._mounts:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/" or prefix == "/"):
                return prefix, routes
        return None

    async def handle(self, mount: tuple[str, list[WebhookRoute]], scope: Scope, receive: Receive, send: Send) -> None:
        prefix, routes = mount
        hub = self._hub
        method: str = scope.get("method", "GET")  # type: ignore[assignment]  # only HTTP scopes get here
        raw = scope.get("raw_path") or b""
        path = raw.decode("latin-1") if raw else scope["path"]
        try:
            route, params = _match(routes, path[len(prefix) :], path)
            if method not in route.methods:
                raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            body = await _read_body(receive, headers, hub.settings.max_body_bytes)
            request = WebhookRequest(
                method=method,
                path=path,
                path_params=params,
                headers=headers,
                query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
                body=body,
            )
            status, payload = await route.handler(hub, request)
        except ApiError as exc:
            status, payload = exc.status, {"error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:
            if hub.store.unavailable(exc):  # nothing was stored: the sender's retry is what we want
                log.warning("store_unavailable", path=path, error=repr(exc))
                status, payload = 503, STORE_UNAVAILABLE
            else:
                log.error("webhook_handler_failed", path=path, error=repr(exc), exc_info=exc)
                status = 500
                message = "the hub hit an internal error; see its logs"
                payload = {"error": {"code": "internal_error", "message": message}}
        data = _encode(payload)
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        if status == 503:
            head.append((b"retry-after", RETRY_AFTER_S.encode()))
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": head}
        await send(start)
        body_event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": data, "more_body": False}
        await send(body_event)


def _match(routes: list[WebhookRoute], rest: str, path: str) -> tuple[WebhookRoute, dict[str, str]]:
    for route in routes:
        found = route.pattern.match(rest)
        if found:
            return route, {k: unquote(v) for k, v in found.groupdict().items()}
    raise ApiError(404, "not_found", f"no route for {path}")


async def _read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client_disconnected", "the client went away before sending the whole body")
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
