"""A tenant's webhook endpoint: records every delivery; can fail, stall and recover on command."""

from __future__ import annotations

from typing import Any

from .server import FakeServer, RecordedRequest, Response


class FakeReceiver(FakeServer):
    """Answers 204 to every POST unless told otherwise (``fail_next``, ``latency``, ``set_down``).

    ``wait_for(n)`` counts deliveries answered 2xx.
    """

    name = "fake-receiver"

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        #: Per-path answer overrides: path -> status (e.g. 410 to say "gone").
        self.status_for_path: dict[str, int] = {}

    async def handle(self, request: RecordedRequest) -> Response:
        if request.method != "POST":
            return Response(405, {"error": "method not allowed"})
        return Response(self.status_for_path.get(request.path, 204))

    def _wait_items(self) -> list[Any]:
        return [r for r in self._requests if r.status is not None and 200 <= r.status < 300]

    def delivered(self, path: str | None = None) -> list[RecordedRequest]:
        """Deliveries answered 2xx (optionally to one path), in arrival order."""
        with self._lock:
            return [r for r in self._wait_items() if path is None or r.path == path]

    def reset(self) -> None:
        super().reset()
        self.status_for_path.clear()
