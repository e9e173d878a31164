"""A fake Slack Web API for tests: a real HTTP server on 127.0.0.1 that slack_sdk's client talks to.

Point the client at ``f"{fake.url}/api/"`` (the hub reads ``SLACK_API_URL``). Covers what the hub uses:
``auth.test``, ``chat.postMessage`` and the ``files_upload_v2`` sequence (``files.getUploadURLExternal``,
the returned upload URL, ``files.completeUploadExternal``). Shapes follow Slack: ``Authorization: Bearer
xoxb-...``; arguments as JSON, form or query; application errors are HTTP 200 ``{"ok": false, "error"}``;
rate limits are HTTP 429 with ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``.

Test controls: :meth:`FakeSlack.inject` (an ``ok: false`` error or a 429 for the n-th next call of a
method), ``missing_channels`` (answered ``channel_not_found``), :meth:`FakeSlack.revoke`, and
:meth:`FakeSlack.host_file` (serve bytes for the hub to download as outbound media).
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from .server import FakeServer, RecordedRequest, Response

DEFAULT_TOKEN = "xoxb-0001-acme-test-token"


@dataclass
class Workspace:
    """One app installation: what ``auth.test`` says about a bot token."""

    token: str
    team_id: str = "T0ACME001"
    team: str = "Acme"
    bot_user_id: str = "U0HUBBOT1"
    bot_id: str = "B0HUBBOT1"
    app_id: str = "A0HUBAPP1"
    revoked: bool = False


@dataclass
class _Injection:
    method: str
    skip: int
    remaining: int
    response: Response


@dataclass
class Upload:
    """A completed ``files_upload_v2``: where it was shared and the bytes of each file."""

    channel_id: str | None
    thread_ts: str | None
    initial_comment: str | None
    files: list[dict[str, Any]] = field(default_factory=list)


class FakeSlack(FakeServer):
    """Fake Slack Web API. ``wait_for(n)`` counts successful ``chat.postMessage`` calls."""

    name = "fake-slack"

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self._workspaces: dict[str, Workspace] = {}
        self._injections: list[_Injection] = []
        self._posts: list[RecordedRequest] = []
        self._pending_files: dict[str, dict[str, Any]] = {}
        self._uploads: list[Upload] = []
        self._hosted: dict[str, tuple[bytes, str]] = {}
        self._seq = itertools.count(1)
        #: Channels that answer ``channel_not_found``.
        self.missing_channels: set[str] = set()
        self.add_workspace(Workspace(DEFAULT_TOKEN))

    # --- controls -----------------------------------------------------------------------------
    def add_workspace(self, workspace: Workspace) -> Workspace:
        with self._lock:
            self._workspaces[workspace.token] = workspace
        return workspace

    def revoke(self, token: str = DEFAULT_TOKEN) -> None:
        """Make ``token`` answer ``token_revoked`` from now on."""
        with self._lock:
            self._workspaces[token].revoked = True

    def inject(
        self,
        method: str,
        error: str = "internal_error",
        *,
        status: int = 200,
        retry_after: float | None = None,
        after: int = 0,
        times: int = 1,
    ) -> None:
        """Answer ``times`` calls of ``method`` with ``{"ok": false, "error": error}`` (HTTP ``status``),
        after letting the next ``after`` calls of it through."""
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        response = Response(status, {"ok": False, "error": error}, headers)
        with self._lock:
            self._injections.append(_Injection(method, after, times, response))

    def rate_limit(self, method: str, retry_after: float = 1, *, after: int = 0, times: int = 1) -> None:
        """HTTP 429 ``ratelimited`` with ``Retry-After`` for ``times`` calls of ``method``."""
        self.inject(method, "ratelimited", status=429, retry_after=retry_after, after=after, times=times)

    def host_file(self, name: str, content: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve ``content`` at a URL on this server (outbound media for the hub to download)."""
        with self._lock:
            self._hosted[name] = (content, content_type)
        return f"{self.url}/hosted/{name}"

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._workspaces = {DEFAULT_TOKEN: Workspace(DEFAULT_TOKEN)}
            self._injections.clear()
            self._posts.clear()
            self._pending_files.clear()
            self._uploads.clear()
            self._hosted.clear()
            self.missing_channels = set()

    # --- inspection ---------------------------------------------------------------------------
    def posts(self) -> list[dict[str, Any]]:
        """Arguments of every successful ``chat.postMessage``, in order, with the ``ts`` Slack gave it."""
        with self._lock:
            return [{**r.body, "ts": r.response["ts"]} for r in self._posts]

    def post_texts(self) -> list[str]:
        return [p.get("text", "") for p in self.posts()]

    def calls(self, method: str) -> list[RecordedRequest]:
        """Every request to ``method`` (including failed and injected ones), in arrival order."""
        return self.requests_to(f"/api/{method}")

    def uploads(self) -> list[Upload]:
        with self._lock:
            return list(self._uploads)

    def _wait_items(self) -> list[Any]:
        return list(self._posts)

    # --- protocol -----------------------------------------------------------------------------
    def error_response(self, status: int, message: Any) -> Response:
        return Response(status, {"ok": False, "error": message})

    async def handle(self, request: RecordedRequest) -> Response:
        if request.method == "GET" and request.path.startswith("/hosted/"):
            with self._lock:
                hosted = self._hosted.get(request.path.removeprefix("/hosted/"))
            if hosted is None:
                return Response(404, "not found")
            return Response(200, hosted[0], {"content-type": hosted[1]})
        if request.method == "POST" and request.path.startswith("/upload/v1/"):
            return self._upload(request)
        if not request.path.startswith("/api/"):
            return Response(404, {"ok": False, "error": "unknown_method"})
        method = request.path.removeprefix("/api/")
        injected = self._take_injection(method)
        if injected is not None:
            request.injected = True
            return injected
        workspace, failure = self._authorize(request)
        if failure is not None:
            return failure
        assert workspace is not None
        args = _arguments(request)
        if method == "auth.test":
            return _ok(
                url=f"https://{workspace.team.lower()}.slack.com/",
                team=workspace.team,
                user="hub-bot",
                team_id=workspace.team_id,
                user_id=workspace.bot_user_id,
                bot_id=workspace.bot_id,
                is_enterprise_install=False,
            )
        if method == "chat.postMessage":
            return self._post_message(workspace, args)
        if method == "files.getUploadURLExternal":
            return self._upload_url(args)
        if method == "files.completeUploadExternal":
            return self._complete_upload(args)
        return Response(200, {"ok": False, "error": "unknown_method"})

    def on_answered(self, request: RecordedRequest, response: Response) -> None:
        if (
            request.path == "/api/chat.postMessage"
            and not request.injected
            and isinstance(response.body, dict)
            and response.body.get("ok") is True
        ):
            request.body = _arguments(request)
            self._posts.append(request)

    def _take_injection(self, method: str) -> Response | None:
        with self._lock:
            for injection in self._injections:
                if injection.method != method:
                    continue
                if injection.skip > 0:
                    injection.skip -= 1
                    return None
                injection.remaining -= 1
                if injection.remaining <= 0:
                    self._injections.remove(injection)
                return injection.response
        return None

    def _authorize(self, request: RecordedRequest) -> tuple[Workspace | None, Response | None]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, Response(200, {"ok": False, "error": "not_authed"})
        with self._lock:
            workspace = next(
                (w for t, w in self._workspaces.items() if secrets.compare_digest(t.encode(), token.strip().encode())),
                None,
            )
        if workspace is None:
            return None, Response(200, {"ok": False, "error": "invalid_auth"})
        if workspace.revoked:
            return None, Response(200, {"ok": False, "error": "token_revoked"})
        return workspace, None

    def _next_ts(self) -> str:
        # Tests make their events' ts with small fractions; the fake's start at .500000, so they never meet.
        return f"{int(time.time())}.{500000 + next(self._seq) % 500000:06d}"

    def _post_message(self, workspace: Workspace, args: dict[str, Any]) -> Response:
        channel = args.get("channel")
        if not isinstance(channel, str) or not channel:
            return Response(200, {"ok": False, "error": "channel_not_found"})
        with self._lock:
            missing = channel in self.missing_channels
        if missing:
            return Response(200, {"ok": False, "error": "channel_not_found"})
        text = args.get("text")
        has_text = isinstance(text, str) and bool(text.strip())
        if not has_text and not args.get("blocks") and not args.get("attachments"):
            return Response(200, {"ok": False, "error": "no_text"})
        if isinstance(text, str) and len(text) > 40_000:
            return Response(200, {"ok": False, "error": "msg_too_long"})
        ts = self._next_ts()
        message: dict[str, Any] = {
            "bot_id": workspace.bot_id,
            "type": "message",
            "text": text or "",
            "user": workspace.bot_user_id,
            "ts": ts,
            "app_id": workspace.app_id,
            "team": workspace.team_id,
        }
        if isinstance(args.get("thread_ts"), str):
            message["thread_ts"] = args["thread_ts"]
        # Posting to a user id opens (or reuses) the app's DM with that user.
        target = f"D{channel[1:]}" if channel.startswith(("U", "W")) else channel
        return _ok(channel=target, ts=ts, message=message)

    def _upload_url(self, args: dict[str, Any]) -> Response:
        filename = args.get("filename")
        length = args.get("length")
        if not isinstance(filename, str) or not filename:
            return Response(200, {"ok": False, "error": "invalid_arguments"})
        try:
            size = int(length)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return Response(200, {"ok": False, "error": "invalid_arguments"})
        file_id = f"F{next(self._seq):08d}"
        with self._lock:
            self._pending_files[file_id] = {"id": file_id, "name": filename, "length": size, "content": None}
        return _ok(upload_url=f"{self.url}/upload/v1/{file_id}", file_id=file_id)

    def _upload(self, request: RecordedRequest) -> Response:
        file_id = request.path.removeprefix("/upload/v1/")
        with self._lock:
            pending = self._pending_files.get(file_id)
            if pending is None:
                return Response(404, "unknown upload")
            pending["content"] = request.raw
        return Response(200, f"OK - {len(request.raw)}")

    def _complete_upload(self, args: dict[str, Any]) -> Response:
        try:
            files = json.loads(args.get("files") or "[]")
        except ValueError:
            return Response(200, {"ok": False, "error": "invalid_arguments"})
        upload = Upload(
            channel_id=args.get("channel_id"),
            thread_ts=args.get("thread_ts"),
            initial_comment=args.get("initial_comment"),
        )
        answer = []
        with self._lock:
            for item in files:
                pending = self._pending_files.pop(str(item.get("id")), None)
                if pending is None or pending["content"] is None:
                    return Response(200, {"ok": False, "error": "file_not_found"})
                upload.files.append({**pending, "title": item.get("title")})
                answer.append({"id": pending["id"], "name": pending["name"], "title": item.get("title")})
            self._uploads.append(upload)
        return _ok(files=answer)


def _ok(**fields: Any) -> Response:
    return Response(200, {"ok": True, **fields})


def _arguments(request: RecordedRequest) -> dict[str, Any]:
    """Web API arguments from the query, a form body or a JSON body (the last wins)."""
    args: dict[str, Any] = dict(request.query)
    content_type = request.headers.get("content-type", "")
    if isinstance(request.body, dict):
        args.update(request.body)
    elif "application/x-www-form-urlencoded" in content_type and request.raw:
        args.update({k: v[-1] for k, v in parse_qs(request.raw.decode()).items()})
    return args
