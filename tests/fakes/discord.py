"""A fake Discord: the REST API (``/api/v10``) on :class:`FakeServer` and a Gateway WebSocket beside it.

* REST: ``GET /users/@me``, ``GET /oauth2/applications/@me``, ``GET /gateway/bot`` (answers the fake
  gateway's ``ws://`` URL), ``POST /channels/{id}/messages`` (JSON or multipart with files, honouring
  ``nonce`` + ``enforce_nonce``), ``POST /users/@me/channels`` (open a DM), the interaction webhook
  (``GET``/``PATCH .../messages/@original``, ``POST /webhooks/{app}/{token}`` follow-ups) and ``GET /cdn/{name}``
  (files for outbound media). Bot routes need ``Authorization: Bot <token>`` of a known, unrevoked bot.
* Gateway (aiohttp, own thread and loop): HELLO, IDENTIFY -> READY (+ GUILD_CREATE for the bot's guilds),
  HEARTBEAT -> ACK, RESUME -> RESUMED, a bad token -> close 4004. Tests push events with :meth:`dispatch`.
* Controls: :meth:`rate_limit_next` (429 with ``retry_after`` and the ``Via`` header discord.py expects
  from Discord's edge), ``fail_next`` (any status), :meth:`revoke`, :meth:`disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import WSMsgType, web

from .server import FakeServer, RecordedRequest, Response

API_PREFIXES = ("/api/v10", "/api/v9", "/api")
FLAG_LOADING = 1 << 7
INTENT_MESSAGE_CONTENT = 1 << 15

_ids = itertools.count(1)


def snowflake(at: float | None = None) -> str:
    """A fresh, increasing snowflake whose timestamp is ``at`` (default now)."""
    millis = int((time.time() if at is None else at) * 1000) - 1_420_070_400_000
    return str((millis << 22) | (next(_ids) & 0x3FFFFF))


@dataclass
class FakeBot:
    token: str
    user_id: str
    application_id: str
    public_key: str
    username: str = "acme-hub"
    revoked: bool = False
    message_content_intent: bool = True
    guilds: list[dict[str, Any]] = field(default_factory=list)

    def user(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "username": self.username,
            "discriminator": "4321",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "public_flags": 524288,
            "flags": 524288,
            "verified": True,
            "mfa_enabled": False,
        }

    def application(self) -> dict[str, Any]:
        return {
            "id": self.application_id,
            "name": self.username,
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": self.public_key,
            "flags": 0,
            "team": None,
            "owner": {"id": "1000000000000000099", "username": "owner", "discriminator": "0", "avatar": None},
            "summary": "",
            "bot": self.user(),
        }


@dataclass
class Posted:
    """A message the fake created: in a channel, as an interaction's original response, or a follow-up."""

    id: str
    kind: str  #: "channel" | "original" | "followup"
    channel_id: str | None
    content: str | None
    payload: dict[str, Any]
    files: list[tuple[str, bytes]]
    bot_token: str | None
    time: float

    @property
    def reference(self) -> str | None:
        ref = self.payload.get("message_reference")
        return ref.get("message_id") if isinstance(ref, dict) else None


@dataclass
class _RateLimit:
    retry_after: float
    path: str | None
    is_global: bool
    via: bool


@dataclass
class _Interaction:
    application_id: str
    token: str
    channel_id: str
    original: dict[str, Any]
    edited: bool = False


class FakeDiscord(FakeServer):
    """Fake Discord REST API plus gateway. ``wait_for(n)`` counts created messages (any kind)."""

    name = "fake-discord"

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.gateway = FakeGateway(self)
        self._bots: dict[str, FakeBot] = {}
        self._posted: list[Posted] = []
        #: Messages created by requests not answered yet, by request: they count (``wait_for``,
        #: ``posted``) once their answer is booked, so a waiter never sees a message whose
        #: request still shows no status.
        self._unanswered: dict[int, list[Posted]] = {}
        self._nonces: dict[tuple[str | None, str], Posted] = {}
        self._rate_limits: list[_RateLimit] = []
        self._interactions: dict[str, _Interaction] = {}
        self._files: dict[str, tuple[bytes, str]] = {}
        self._dm_channels: dict[str, str] = {}

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Self:
        super().start()
        self.gateway.start()
        return self

    def stop(self) -> None:
        self.gateway.stop()
        super().stop()

    @property
    def api_url(self) -> str:
        """What ``DISCORD_API_URL`` should be."""
        return f"{self.url}/api/v10"

    # --- controls -----------------------------------------------------------------------------
    def add_bot(
        self,
        token: str,
        *,
        user_id: str,
        application_id: str,
        public_key: str,
        username: str = "acme-hub",
        guilds: list[dict[str, Any]] | None = None,
    ) -> FakeBot:
        bot = FakeBot(token, user_id, application_id, public_key, username, guilds=list(guilds or []))
        with self._lock:
            self._bots[token] = bot
        return bot

    def bot(self, token: str) -> FakeBot:
        with self._lock:
            return self._bots[token]

    def revoke(self, token: str) -> None:
        """The token stops working (a reset in the developer portal): REST 401, IDENTIFY closes 4004."""
        with self._lock:
            self._bots[token].revoked = True

    def rate_limit_next(
        self,
        n: int = 1,
        retry_after: float = 0.3,
        *,
        path: str | None = None,
        is_global: bool = False,
        via: bool = True,
    ) -> None:
        """Answer the next ``n`` requests (whose path contains ``path``) with Discord's 429."""
        with self._lock:
            self._rate_limits.extend(_RateLimit(retry_after, path, is_global, via) for _ in range(n))

    def open_interaction(self, application_id: str, token: str, channel_id: str) -> None:
        """What Discord does when the hub answers an interaction with type 5: a "thinking..." placeholder."""
        original = {
            "id": snowflake(),
            "type": 20,
            "channel_id": channel_id,
            "content": "",
            "flags": FLAG_LOADING,
            "application_id": application_id,
            "author": {"id": application_id, "username": "acme-hub", "discriminator": "0", "bot": True},
            "attachments": [],
            "embeds": [],
        }
        with self._lock:
            self._interactions[token] = _Interaction(application_id, token, channel_id, original)

    def add_file(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve ``data`` at ``GET /cdn/{name}``; returns its URL."""
        with self._lock:
            self._files[name] = (data, content_type)
        return f"{self.url}/cdn/{name}"

    def dispatch(self, token: str, event: str, data: dict[str, Any], timeout: float = 5.0) -> int:
        """Send a gateway DISPATCH to every live session of the bot; returns how many got it."""
        return self.gateway.dispatch(token, event, data, timeout)

    def disconnect(self, token: str, code: int = 4000) -> int:
        return self.gateway.disconnect(token, code)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._bots.clear()
            self._posted.clear()
            self._unanswered.clear()
            self._nonces.clear()
            self._rate_limits.clear()
            self._interactions.clear()
            self._files.clear()
            self._dm_channels.clear()
        self.gateway.reset()

    # --- inspection ---------------------------------------------------------------------------
    def posted(self, kind: str | None = None, channel_id: str | None = None) -> list[Posted]:
        with self._lock:
            return [
                p
                for p in self._posted
                if (kind is None or p.kind == kind) and (channel_id is None or p.channel_id == channel_id)
            ]

    def _wait_items(self) -> list[Any]:
        return list(self._posted)

    def interaction_original(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._interactions.get(token)
            return dict(found.original) if found is not None and found.edited else None

    # --- protocol -----------------------------------------------------------------------------
    def error_response(self, status: int, message: Any) -> Response:
        return _json(status, {"message": f"{status}: {message}", "code": 0})

    def _bot_for(self, request: RecordedRequest) -> FakeBot | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bot":
            return None
        with self._lock:
            bot = self._bots.get(token.strip())
        return None if bot is None or bot.revoked else bot

    def _take_rate_limit(self, path: str) -> _RateLimit | None:
        with self._lock:
            for i, limit in enumerate(self._rate_limits):
                if limit.path is None or limit.path in path:
                    return self._rate_limits.pop(i)
        return None

    @staticmethod
    def _limited(limit: _RateLimit) -> Response:
        headers = {
            "Retry-After": str(max(1, int(limit.retry_after + 0.999))),
            "X-RateLimit-Scope": "global" if limit.is_global else "user",
        }
        if limit.via:
            headers["Via"] = "1.1 google"
        if limit.is_global:
            headers["X-RateLimit-Global"] = "true"
        else:
            headers.update(
                {
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": f"{limit.retry_after:.3f}",
                    "X-RateLimit-Bucket": "fake-bucket",
                }
            )
        body = {"message": "You are being rate limited.", "retry_after": limit.retry_after, "global": limit.is_global}
        return _json(429, body, headers)

    async def handle(self, request: RecordedRequest) -> Response:
        path = request.path
        for prefix in API_PREFIXES:
            if path.startswith(prefix + "/"):
                path = path[len(prefix) :]
                break
        parts = [p for p in path.split("/") if p]
        if request.method == "GET" and len(parts) == 2 and parts[0] == "cdn":
            return self._cdn(parts[1])
        limit = self._take_rate_limit(request.path)
        if limit is not None:
            request.injected = True
            return self._limited(limit)
        if parts[:1] == ["webhooks"] and len(parts) >= 3:
            return self._webhook(request, parts)
        bot = self._bot_for(request)
        if bot is None:
            return _json(401, {"message": "401: Unauthorized", "code": 0})
        route = (request.method, "/".join(parts))
        if route == ("GET", "users/@me"):
            return self._ok(bot.user())
        if route == ("GET", "oauth2/applications/@me"):
            return self._ok(bot.application())
        if route == ("GET", "gateway/bot"):
            return self._ok(
                {
                    "url": self.gateway.url,
                    "shards": 1,
                    "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
                }
            )
        if route == ("POST", "users/@me/channels"):
            return self._open_dm(request)
        if request.method == "POST" and len(parts) == 3 and parts[0] == "channels" and parts[2] == "messages":
            return self._create_message(request, bot, parts[1])
        return _json(404, {"message": "404: Not Found", "code": 0})

    @staticmethod
    def _ok(body: Any) -> Response:
        headers = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset-After": "1.000",
            "X-RateLimit-Bucket": "fake-bucket",
        }
        return _json(200, body, headers)

    def _cdn(self, name: str) -> Response:
        with self._lock:
            found = self._files.get(name)
        if found is None:
            return _json(404, {"message": "404: Not Found", "code": 0})
        data, content_type = found
        return Response(200, data, {"content-type": content_type})

    def _open_dm(self, request: RecordedRequest) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        user_id = str(body.get("recipient_id") or "")
        if not user_id.isdigit():
            return _json(400, {"message": "Invalid Form Body", "code": 50035})
        with self._lock:
            channel_id = self._dm_channels.setdefault(user_id, snowflake())
        return self._ok({"id": channel_id, "type": 1, "recipients": [{"id": user_id, "username": "someone"}]})

    def on_answered(self, request: RecordedRequest, response: Response) -> None:
        self._posted.extend(self._unanswered.pop(id(request), ()))

    def _record(
        self,
        request: RecordedRequest,
        kind: str,
        channel_id: str | None,
        payload: dict[str, Any],
        files: list[tuple[str, bytes]],
        token: str | None,
    ) -> Posted:
        posted = Posted(
            id=snowflake(),
            kind=kind,
            channel_id=channel_id,
            content=payload.get("content"),
            payload=payload,
            files=files,
            bot_token=token,
            time=time.monotonic(),
        )
        with self._cond:
            self._unanswered.setdefault(id(request), []).append(posted)
        return posted

    def _message_body(self, posted: Posted, author: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": posted.id,
            "type": 19 if posted.reference else 0,
            "channel_id": posted.channel_id,
            "content": posted.content or "",
            "author": author,
            "attachments": [
                {"id": snowflake(), "filename": name, "size": len(data), "url": f"{self.url}/attachments/{name}"}
                for name, data in posted.files
            ],
            "embeds": [],
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "mention_everyone": False,
            "tts": False,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime()),
            "edited_timestamp": None,
            "flags": 0,
            "components": [],
        }
        if "nonce" in posted.payload:
            out["nonce"] = posted.payload["nonce"]
        if posted.reference:
            out["message_reference"] = {"type": 0, "channel_id": posted.channel_id, "message_id": posted.reference}
        return out

    def _create_message(self, request: RecordedRequest, bot: FakeBot, channel_id: str) -> Response:
        payload, files, problem = _read_message_request(request)
        if problem is not None:
            return _json(400, {"message": problem, "code": 50035})
        content = payload.get("content")
        if isinstance(content, str) and len(content) > 2000:
            return _json(
                400,
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Too long"}]}},
                },
            )
        if not content and not files:
            return _json(400, {"message": "Cannot send an empty message", "code": 50006})
        nonce = payload.get("nonce")
        if isinstance(nonce, str | int) and payload.get("enforce_nonce"):
            with self._lock:
                earlier = self._nonces.get((bot.token, str(nonce)))
            if earlier is not None:
                return self._ok(self._message_body(earlier, bot.user()))
        posted = self._record(request, "channel", channel_id, payload, files, bot.token)
        if isinstance(nonce, str | int) and payload.get("enforce_nonce"):
            with self._lock:
                self._nonces[(bot.token, str(nonce))] = posted
        return self._ok(self._message_body(posted, bot.user()))

    def _webhook(self, request: RecordedRequest, parts: list[str]) -> Response:
        application_id, token = parts[1], parts[2]
        with self._lock:
            interaction = self._interactions.get(token)
        if interaction is None or interaction.application_id != application_id:
            return _json(404, {"message": "Unknown Webhook", "code": 10015})
        author = {"id": application_id, "username": "acme-hub", "discriminator": "0", "bot": True}
        rest = parts[3:]
        if rest == ["messages", "@original"] and request.method == "GET":
            with self._lock:
                return self._ok(dict(interaction.original))
        if rest == ["messages", "@original"] and request.method == "PATCH":
            payload, files, problem = _read_message_request(request)
            if problem is not None:
                return _json(400, {"message": problem, "code": 50035})
            posted = self._record(request, "original", interaction.channel_id, payload, files, None)
            body = self._message_body(posted, author)
            body["id"] = interaction.original["id"]
            posted.id = interaction.original["id"]
            with self._lock:
                interaction.original = {**body, "flags": 0}
                interaction.edited = True
            return self._ok(body)
        if not rest and request.method == "POST":
            payload, files, problem = _read_message_request(request)
            if problem is not None:
                return _json(400, {"message": problem, "code": 50035})
            posted = self._record(request, "followup", interaction.channel_id, payload, files, None)
            return self._ok(self._message_body(posted, author))
        return _json(404, {"message": "404: Not Found", "code": 0})


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer with Discord's exact ``Content-Type`` (discord.py decodes only ``application/json``)."""
    return Response(status, body, {**(headers or {}), "Content-Type": "application/json"})


def _read_message_request(request: RecordedRequest) -> tuple[dict[str, Any], list[tuple[str, bytes]], str | None]:
    """(payload, files, problem) of a JSON or ``multipart/form-data`` (``payload_json`` + ``files[n]``) body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + request.raw
        )
        payload: dict[str, Any] = {}
        files: list[tuple[str, bytes]] = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            raw = part.get_payload(decode=True)
            data = raw if isinstance(raw, bytes) else b""
            if name == "payload_json":
                payload = json.loads(data)
            elif isinstance(name, str) and name.startswith("files["):
                files.append((str(part.get_filename() or name), data))
        return payload, files, None
    if not isinstance(request.body, dict):
        return {}, [], "body must be a JSON object"
    return dict(request.body), [], None


# ================================================================================================
# The gateway
# ================================================================================================


@dataclass
class _Session:
    session_id: str
    bot: FakeBot
    ws: web.WebSocketResponse | None
    seq: int = 0
    intents: int = 0
    resumed: int = 0


class FakeGateway:
    """The Discord gateway, enough of it for discord.py: served by aiohttp on 127.0.0.1 in its own thread."""

    def __init__(self, rest: FakeDiscord) -> None:
        self.rest = rest
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sessions: dict[str, _Session] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._cond = threading.Condition()
        #: (token, op name) as the fake saw them: "identify", "resume", "rejected", "closed".
        self.events: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        if self._thread is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_get("/", self._handle)
            runner = web.AppRunner(app, handle_signals=False)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
            self._runner = runner
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-discord-gateway", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake discord gateway did not start")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close_all(1001), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = None
        self._thread = None

    def reset(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close_all(1001), self._loop).result(5)
        with self._cond:
            self._sessions.clear()
            self.events.clear()

    # --- test controls --------------------------------------------------------------------------
    def _run(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None, "gateway not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def dispatch(self, token: str, event: str, data: dict[str, Any], timeout: float = 5.0) -> int:
        result: int = self._run(self._dispatch_all(token, event, data), timeout)
        return result

    def disconnect(self, token: str, code: int = 4000) -> int:
        result: int = self._run(self._disconnect(token, code), 5)
        return result

    def live_sessions(self, token: str) -> int:
        with self._cond:
            return sum(1 for s in self._sessions.values() if s.bot.token == token and s.ws is not None)

    def count(self, token: str, what: str) -> int:
        with self._cond:
            return sum(1 for t, w in self.events if t == token and w == what)

    def wait_until(self, check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"fake gateway: timed out after {timeout}s waiting for {what}; {self.events}")
                self._cond.wait(min(remaining, 0.05))

    def wait_live(self, token: str, n: int = 1, timeout: float = 10.0) -> None:
        self.wait_until(lambda: self.live_sessions(token) >= n, timeout, f"{n} live session(s) of the bot")

    # --- internals (gateway loop) ---------------------------------------------------------------
    def _note(self, token: str, what: str) -> None:
        with self._cond:
            self.events.append((token, what))
            self._cond.notify_all()

    async def _send(self, session: _Session, event: str, data: Any) -> bool:
        ws = session.ws
        if ws is None or ws.closed:
            return False
        session.seq += 1
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": session.seq, "d": data}))
        return True

    async def _dispatch_all(self, token: str, event: str, data: dict[str, Any]) -> int:
        with self._cond:
            sessions = [s for s in self._sessions.values() if s.bot.token == token]
        sent = 0
        for session in sessions:
            if await self._send(session, event, data):
                sent += 1
        return sent

    async def _disconnect(self, token: str, code: int) -> int:
        with self._cond:
            sessions = [s for s in self._sessions.values() if s.bot.token == token and s.ws is not None]
        for session in sessions:
            ws, session.ws = session.ws, None
            if ws is not None:
                await ws.close(code=code, message=b"fake disconnect")
        with self._cond:
            self._cond.notify_all()
        return len(sessions)

    async def _close_all(self, code: int) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=code)

    def _ready(self, session: _Session) -> dict[str, Any]:
        bot = session.bot
        return {
            "v": 10,
            "user": bot.user(),
            "user_settings": {},
            "guilds": [{"id": g["id"], "unavailable": True} for g in bot.guilds],
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.url,
            "shard": [0, 1],
            "application": {"id": bot.application_id, "flags": 0},
            "_trace": ["fake-discord-gateway"],
        }

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: _Session | None = None
        try:
            await ws.send_str(json.dumps({"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": 41250}}))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op, data = frame.get("op"), frame.get("d")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11, "s": None, "t": None, "d": None}))
                elif op == 2:
                    session = await self._identify(ws, data)
                    if session is None:
                        break
                elif op == 6:
                    session = await self._resume(ws, data)
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
                self._note(session.bot.token, "closed")
        return ws

    def _bot(self, token: Any) -> FakeBot | None:
        if not isinstance(token, str):
            return None
        with self.rest._lock:
            bot = self.rest._bots.get(token)
        return None if bot is None or bot.revoked else bot

    async def _identify(self, ws: web.WebSocketResponse, data: Mapping[str, Any]) -> _Session | None:
        token = str(data.get("token") or "")
        bot = self._bot(token)
        if bot is None:
            self._note(token, "rejected")
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents") or 0)
        if intents & INTENT_MESSAGE_CONTENT and not bot.message_content_intent:
            self._note(token, "rejected")
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        session = _Session(session_id=f"fake-session-{snowflake()}", bot=bot, ws=ws, intents=intents)
        with self._cond:
            self._sessions[session.session_id] = session
        await self._send(session, "READY", self._ready(session))
        for guild in bot.guilds:
            await self._send(session, "GUILD_CREATE", guild)
        self._note(token, "identify")
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: Mapping[str, Any]) -> _Session | None:
        token = str(data.get("token") or "")
        with self._cond:
            session = self._sessions.get(str(data.get("session_id")))
        if session is None or self._bot(token) is None or session.bot.token != token:
            self._note(token, "resume_rejected")
            await ws.send_str(json.dumps({"op": 9, "s": None, "t": None, "d": False}))
            return None
        session.ws = ws
        session.resumed += 1
        await self._send(session, "RESUMED", {"_trace": ["fake-discord-gateway"]})
        self._note(token, "resume")
        return session
