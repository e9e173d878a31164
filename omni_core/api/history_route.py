"""``GET /messages/history/{tenant_id}`` answered before Litestar's stack, for plain requests.

History is the REST call made most often and the one with a latency target (p99 <= 20 ms under
load, issue 3). On a slow machine py-spy put ~36% of a page's CPU in Litestar's request handling
around the handler (dependency resolution, signature model, response objects, the exception
middleware's wrappers), more than decoding and encoding the page itself. :class:`HistoryFastPath`
answers a request whose every part it can read without interpretation: the tenant id a plain
segment, only the route's own query parameters, each once, with no percent-encoding or ``+`` in
the query, a plain decimal ``limit`` in range. It calls the same code as the Litestar route
(:func:`omni_core.api.messages.history_page`) and answers with the same status, headers and body.
Anything else, and any request that fails (a missing or wrong key, an unknown tenant, a bad
cursor or timestamp), goes to Litestar untouched, which answers it exactly as before: the fast
path reads nothing from the request that Litestar would then miss, and sends nothing unless it
succeeded.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, HTTPScope, Send

from omni_core.api.messages import HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, history_page

if TYPE_CHECKING:
    from omni_core.auth import Authenticator
    from omni_core.hub import Hub

PREFIX = "/messages/history/"
_PARAMS = frozenset({"instance", "chat_id", "direction", "since", "until", "limit", "cursor"})
#: A tenant id as the API creates them; anything else is Litestar's to answer (404).
_TENANT = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_JSON = b"application/json"


class HistoryFastPath:
    def __init__(self, hub: Hub, app_state: Any) -> None:
        self._hub = hub
        self._state = app_state  # the authenticator is set on it at start-up

    async def handle(self, scope: HTTPScope, send: Send) -> bool:
        """Answer the request and return True, or return False having read and sent nothing."""
        if scope["method"] != "GET":
            return False
        tenant_id = scope["path"][len(PREFIX) :]
        if not _TENANT.fullmatch(tenant_id):
            return False
        params = _plain_query(scope.get("query_string", b""))
        if params is None:
            return False
        limit = HISTORY_LIMIT_DEFAULT
        if (text := params.get("limit")) is not None:
            if not (text.isdigit() and text.isascii() and len(text) <= 3 and text[0] != "0"):
                return False
            limit = int(text)
            if limit > HISTORY_LIMIT_MAX:
                return False
        key = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                if key is not None:
                    return False  # repeated: Litestar decides which one counts
                key = value.decode("latin-1")
        authenticator: Authenticator | None = getattr(self._state, "authenticator", None)
        if authenticator is None or not key:
            return False
        try:
            principal = await authenticator.principal(key)
            body = await history_page(
                self._hub,
                principal,
                tenant_id,
                params.get("instance"),
                params.get("chat_id"),
                params.get("direction"),
                params.get("since"),
                params.get("until"),
                limit,
                params.get("cursor"),
            )
        except Exception:
            return False  # Litestar answers it, error and all, exactly as it would have
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())],
        }
        await send(start)
        answer: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
        await send(answer)
        return True


def _plain_query(raw: bytes) -> dict[str, str] | None:
    """The query's parameters when every one is a known name given once with a non-empty value
    that needs no decoding; None otherwise."""
    params: dict[str, str] = {}
    if not raw:
        return params
    if b"%" in raw or b"+" in raw:
        return None
    for part in raw.decode("latin-1").split("&"):
        name, sep, value = part.partition("=")
        if not sep or not value or name not in _PARAMS or name in params:
            return None
        params[name] = value
    return params
