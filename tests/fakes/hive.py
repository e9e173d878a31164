"""A fake Automagik Hive agent backend: ``POST /process`` on a real HTTP server on 127.0.0.1.

Auth is ``Authorization: Bearer <key>``; every request must carry an ``Idempotency-Key``. The
fake honours idempotency like a careful real server: the first 2xx answer for a key is cached
and replayed for every later request with that key (counted in ``duplicates``, not processed
again). A duplicate that arrives while the original is still being processed waits for it and
gets the same answer. Failures (non-2xx) are not cached, so a retry after a 503 is processed.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from .server import FakeServer, RecordedRequest, Response

DEFAULT_API_KEY = "hive-test-key"

#: What a responder may return: ``(status, body)``, ``(status, body, headers)``, a
#: :class:`Response`, or a bare dict/list (= 200 with that JSON body). ``body`` None = empty body.
ResponderResult = tuple[int, Any] | tuple[int, Any, dict[str, str]] | Response | dict[str, Any] | list[Any]
Responder = Callable[[dict[str, Any]], ResponderResult | Awaitable[ResponderResult]]


def default_reply(request: dict[str, Any]) -> ResponderResult:
    """``{"reply": "echo: <message.content.text>"}``."""
    message = request.get("message") or {}
    content = message.get("content") or {} if isinstance(message, dict) else {}
    text = content.get("text") if isinstance(content, dict) else None
    return 200, {"reply": f"echo: {text or ''}"}


def _to_response(result: ResponderResult) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, dict | list):
        return Response(200, result)
    if isinstance(result, tuple) and len(result) == 2:
        return Response(int(result[0]), result[1])
    if isinstance(result, tuple) and len(result) == 3:
        return Response(int(result[0]), result[1], dict(result[2]))
    raise TypeError(f"responder returned {type(result).__name__}; expected (status, body[, headers])")


class FakeHive(FakeServer):
    """Fake Hive server. ``wait_for(n)`` counts processed requests (distinct keys answered 2xx)."""

    name = "fake-hive"

    def __init__(self, api_key: str | None = DEFAULT_API_KEY, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.api_key = api_key
        #: Settable by tests: request JSON -> reply (see ``ResponderResult``); None = ``default_reply``.
        self.responder: Responder | None = None
        #: Extra seconds for requests of one tenant (``body["tenant"]``), on top of ``latency``.
        self.tenant_latency: dict[str, float] = {}
        self._cache: dict[str, Response] = {}
        self._inflight: dict[str, asyncio.Future[Response]] = {}
        self._processed: list[RecordedRequest] = []
        self._answering: set[int] = set()
        self._duplicates = 0

    # --- inspection ---------------------------------------------------------------------------
    @property
    def duplicates(self) -> int:
        """Requests answered from the idempotency cache (or by waiting on an in-flight original)."""
        with self._lock:
            return self._duplicates

    def processed(self) -> list[dict[str, Any]]:
        """Bodies of processed requests (first 2xx per Idempotency-Key), in completion order."""
        with self._lock:
            return [r.body for r in self._processed]

    def processed_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._processed)

    def processed_keys(self) -> list[str]:
        with self._lock:
            return [r.headers["idempotency-key"] for r in self._processed]

    def received_texts(self) -> list[str | None]:
        """``message.content.text`` of every processed request, in order."""
        with self._lock:
            return [((r.body.get("message") or {}).get("content") or {}).get("text") for r in self._processed]

    def _wait_items(self) -> list[Any]:
        return list(self._processed)

    # --- controls -----------------------------------------------------------------------------
    def set_latency(self, seconds: float, tenant: str | None = None) -> None:
        """Global latency, or extra latency for one tenant's requests."""
        if tenant is None:
            self.latency = seconds
        else:
            with self._lock:
                self.tenant_latency[tenant] = seconds

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        *,
        retry_after: float | None = None,
        path: str | None = None,
        body: Any = None,
    ) -> None:
        super().fail_next(n, status, retry_after=retry_after, path=path, body=body)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.tenant_latency.clear()
            self.responder = None
            self._cache.clear()
            self._processed.clear()
            self._answering.clear()
            self._duplicates = 0

    # --- protocol -----------------------------------------------------------------------------
    def error_response(self, status: int, message: Any) -> Response:
        return Response(status, {"detail": message})

    def latency_for(self, request: RecordedRequest) -> float:
        tenant = request.body.get("tenant") if isinstance(request.body, dict) else None
        with self._lock:
            extra = self.tenant_latency.get(tenant, 0.0) if isinstance(tenant, str) else 0.0
        return self.latency + extra

    def _authorized(self, request: RecordedRequest) -> bool:
        if self.api_key is None:
            return True
        provided = request.headers.get("authorization", "")
        scheme, _, token = provided.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode())

    async def handle(self, request: RecordedRequest) -> Response:
        if request.path.rstrip("/") != "/process":
            return Response(404, {"detail": "Not Found"})
        if request.method != "POST":
            return Response(405, {"detail": "Method Not Allowed"}, {"Allow": "POST"})
        if not self._authorized(request):
            return Response(401, {"detail": "Invalid or missing API key"}, {"WWW-Authenticate": "Bearer"})
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return Response(400, {"detail": "Idempotency-Key header is required"})
        body = request.body
        if not isinstance(body, dict):
            return Response(422, {"detail": "request body must be a JSON object"})
        if not isinstance(body.get("message"), dict):
            return Response(422, {"detail": "field 'message' is required and must be an object"})

        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                if request.generation == self._generation:
                    self._duplicates += 1
                request.duplicate = True
                return cached
        inflight = self._inflight.get(key)  # only touched on the server loop: no lock needed
        if inflight is not None:
            with self._lock:
                if request.generation == self._generation:
                    self._duplicates += 1
            request.duplicate = True
            return await asyncio.shield(inflight)

        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            response = await self._produce(body)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # a broken responder: answer 500 (not cached) rather than hang
            response = Response(500, {"detail": f"fake responder crashed: {type(exc).__name__}: {exc}"})
        finally:
            self._inflight.pop(key, None)
        if 200 <= response.status < 300:
            with self._lock:
                if request.generation != self._generation:  # answered after a reset(): forget it
                    future.set_result(response)
                    return response
                self._cache[key] = response
                # Counted once its answer is booked (on_answered): a waiter never sees a processed
                # request that still shows no status.
                self._answering.add(id(request))
        future.set_result(response)
        return response

    def on_answered(self, request: RecordedRequest, response: Response) -> None:
        if id(request) in self._answering:
            self._answering.discard(id(request))
            self._processed.append(request)

    async def _produce(self, body: dict[str, Any]) -> Response:
        responder = self.responder or default_reply
        result = responder(body)
        if inspect.isawaitable(result):
            result = await result
        return _to_response(result)
