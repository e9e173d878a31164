"""Webhook routes dispatched ahead of Litestar: which paths a prefix owns, and the answers given."""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace
from typing import Any, cast

from omni_core.errors import ApiError
from omni_core.hub import Hub
from omni_core.store.sqlite import SqliteStore
from omni_core.webhook_route import WebhookDispatcher, WebhookRequest, webhook_route


async def _echo(hub: Hub, request: WebhookRequest) -> tuple[int, Any]:
    if request.body == b"boom":
        raise ApiError(422, "bad_thing", "the body says boom")
    if request.body == b"crash":
        raise RuntimeError("a bug in the handler, with a secret inside: sk-123")
    if request.body == b"locked":
        raise sqlite3.OperationalError("database is locked")
    return 200, {"params": request.path_params, "query": request.query, "body": request.body.decode()}


def _dispatcher(max_body: int = 100) -> WebhookDispatcher:
    # A real (unopened) store: the dispatcher asks it whether an error means "unavailable".
    hub = cast(Hub, SimpleNamespace(settings=SimpleNamespace(max_body_bytes=max_body), store=SqliteStore(":memory:")))
    routes = [
        webhook_route("/webhooks/x/{tenant_id}", _echo, name="x_tenant"),
        webhook_route("/webhooks/x", _echo, name="x"),
        webhook_route("/webhooks/x/deep/{a:str}", _echo, name="x_deep"),
    ]
    return WebhookDispatcher(hub, routes)


async def _call(
    dispatcher: WebhookDispatcher, method: str, path: str, body: bytes = b"", query: bytes = b""
) -> tuple[int, dict[str, Any]]:
    mount = dispatcher.find(path)
    assert mount is not None, path
    scope: Any = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"Content-Type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await dispatcher.handle(mount, scope, cast(Any, receive), cast(Any, send))
    start, payload = sent
    assert (b"content-type", b"application/json") in start["headers"]
    return start["status"], json.loads(payload["body"])


def test_a_prefix_owns_its_path_and_subtree_only() -> None:
    d = _dispatcher()
    for path in ("/webhooks/x", "/webhooks/x/", "/webhooks/x/acme", "/webhooks/x/deepx", "/webhooks/x/a/b/c"):
        found = d.find(path)
        assert found is not None and found[0] == "/webhooks/x", path
    found = d.find("/webhooks/x/deep/1")  # the longer prefix wins
    assert found is not None and found[0] == "/webhooks/x/deep"
    for path in ("/webhooks/xy", "/webhooks", "/health", "/webhooks/y/acme", "/"):
        assert d.find(path) is None, path


async def test_routes_match_params_query_and_body() -> None:
    d = _dispatcher()
    assert await _call(d, "POST", "/webhooks/x/acme%20co", b"hi", b"token=t1") == (
        200,
        {"params": {"tenant_id": "acme co"}, "query": {"token": "t1"}, "body": "hi"},
    )
    assert (await _call(d, "POST", "/webhooks/x/"))[1]["params"] == {}
    assert (await _call(d, "POST", "/webhooks/x/deep/7"))[1]["params"] == {"a": "7"}


async def test_wrong_paths_methods_and_bodies_get_json_errors() -> None:
    d = _dispatcher(max_body=10)
    status, body = await _call(d, "POST", "/webhooks/x/a/b/c")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await _call(d, "GET", "/webhooks/x/acme")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body = await _call(d, "POST", "/webhooks/x/acme", b"x" * 11)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    status, body = await _call(d, "POST", "/webhooks/x/acme", b"boom")
    assert (status, body["error"]["code"]) == (422, "bad_thing")
    status, body = await _call(d, "POST", "/webhooks/x/acme", b"crash")
    assert status == 500 and body["error"]["code"] == "internal_error"
    assert "sk-123" not in json.dumps(body)  # a handler's exception text never reaches the caller
    status, body = await _call(d, "POST", "/webhooks/x/acme", b"locked")
    assert status == 503 and body["error"]["code"] == "store_unavailable"
