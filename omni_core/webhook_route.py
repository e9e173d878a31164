"""A lean route type for inbound channel webhooks, the hub's hottest path.

A webhook endpoint needs the raw body, headers, query and path parameters, and answers
small JSON. Litestar's full request machinery (dependency injection, signature models,
response objects) costs more CPU than the whole ingest work; these handlers run as plain
ASGI under Litestar's router instead, with the hub's body limit and error format.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import msgspec
import structlog
from litestar import asgi
from litestar.handlers import ASGIRouteHandler

from omni_core.errors import ApiError

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


def mount_webhook_routes(routes: Sequence[WebhookRoute]) -> list[ASGIRouteHandler]:
    """One plain-ASGI mount per static prefix, dispatching on the rest of the path."""
    by_prefix: dict[str, list[WebhookRoute]] = {}
    for route in routes:
        by_prefix.setdefault(route.prefix, []).append(route)
    return [_mount(prefix, group) for prefix, group in by_prefix.items()]


def _mount(prefix: str, routes: list[WebhookRoute]) -> ASGIRouteHandler:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        hub: Hub = scope["app"].state.hub
        method: str = scope.get("method", "GET")  # type: ignore[assignment]  # mounts only see HTTP here
        # A mount sees its own part of the path; the rest is ours to match.
        raw = scope.get("raw_path") or b""
        path = raw.decode("latin-1") if raw else prefix + scope["path"]
        rest = path[len(prefix) :] if path.startswith(prefix) else scope["path"]
        try:
            route, params = _match(routes, rest, path)
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
            log.error("webhook_handler_failed", path=path, error=repr(exc), exc_info=exc)
            status = 500
            payload = {"error": {"code": "internal_error", "message": "the hub hit an internal error; see its logs"}}
        data = _encode(payload)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
        await send(start)
        body_event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": data, "more_body": False}
        await send(body_event)

    name = "webhooks:" + ",".join(r.name for r in routes)
    return asgi(prefix, name=name, is_mount=True, copy_scope=False)(endpoint)


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
