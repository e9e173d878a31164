"""A fake Evolution API (v2.3.x REST surface) for tests: a real HTTP server on 127.0.0.1.

Covers what the hub uses: instance create / connect / connectionState / logout / delete /
fetchInstances, webhook set / find, message sendText / sendMedia. Shapes follow Evolution 2.3:
``apikey`` header auth (global key or the instance's own token), error envelope
``{"status", "error", "response": {"message"}}``, 201 on POSTs that create something.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from .server import FakeServer, RecordedRequest, Response

INTEGRATIONS = ("WHATSAPP-BAILEYS", "WHATSAPP-BUSINESS", "EVOLUTION")
MEDIA_TYPES = ("image", "video", "document", "audio")
DEFAULT_API_KEY = "evolution-test-key"


# --- QR code images -------------------------------------------------------------------------------
def _png(pixels: list[list[int]], scale: int = 4) -> bytes:
    """Encode a black/white bitmap (1 = black) as an 8-bit grayscale PNG."""
    rows = []
    for row in pixels:
        line = bytes(0 if v else 255 for v in row for _ in range(scale))
        rows.extend([b"\x00" + line] * scale)
    width, height = len(pixels[0]) * scale, len(pixels) * scale

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def qr_data_uri(code: str) -> str:
    """A valid PNG data URI whose 25x25 pattern is derived from ``code`` (looks like a QR, isn't one)."""
    bits = "".join(f"{b:08b}" for b in hashlib.sha512(code.encode()).digest() * 2)
    size = 25
    grid = [[int(bits[(y * size + x) % len(bits)]) for x in range(size)] for y in range(size)]
    for ox, oy in ((0, 0), (size - 7, 0), (0, size - 7)):  # the three finder squares
        for y in range(7):
            for x in range(7):
                edge = x in (0, 6) or y in (0, 6)
                core = 2 <= x <= 4 and 2 <= y <= 4
                grid[oy + y][ox + x] = 1 if edge or core else 0
    return "data:image/png;base64," + base64.b64encode(_png(grid)).decode()


def _qr_code_string() -> str:
    def part(n: int) -> str:
        return base64.b64encode(secrets.token_bytes(n)).decode()

    return f"2@{part(24)},{part(32)},{part(32)},{part(32)}"


def _pairing_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _now_iso() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def message_id() -> str:
    """A WhatsApp Web style message id: ``3EB0`` + 20 upper-case hex characters."""
    return "3EB0" + secrets.token_hex(10).upper()


def jid_for(number: str) -> str:
    """Evolution's ``createJid``: keep full JIDs, old-style group ids get ``@g.us``, else digits ``@s.whatsapp.net``."""
    if "@" in number:
        return number
    if "-" in number and re.fullmatch(r"[\d-]+", number):
        return f"{number}@g.us"
    digits = re.sub(r"\D", "", number)
    return f"{digits}@s.whatsapp.net"


def envelope(status: int, message: Any) -> dict[str, Any]:
    """Evolution's error body: ``{"status", "error", "response": {"message"}}``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"status": status, "error": phrase, "response": {"message": message}}


@dataclass
class FakeInstance:
    name: str
    instance_id: str
    token: str
    integration: str = "WHATSAPP-BAILEYS"
    state: str = "close"
    number: str | None = None
    owner_jid: str | None = None
    profile_name: str | None = None
    webhook: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    qr_count: int = 0
    created_at: str = field(default_factory=_now_iso)

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "instance_id": self.instance_id,
            "token": self.token,
            "integration": self.integration,
            "state": self.state,
            "number": self.number,
            "owner_jid": self.owner_jid,
            "webhook": dict(self.webhook) if self.webhook is not None else None,
            "settings": dict(self.settings),
            "qr_count": self.qr_count,
            "created_at": self.created_at,
        }


_SETTING_KEYS = {
    "rejectCall": False,
    "msgCall": "",
    "groupsIgnore": False,
    "alwaysOnline": False,
    "readMessages": False,
    "readStatus": False,
    "syncFullHistory": False,
    "wavoipToken": "",
}


class FakeEvolution(FakeServer):
    """Fake Evolution API server.

    ``accept_any_instance`` (default True): sends (``/message/*``) to an instance the fake never
    created succeed as if it existed and were connected; False answers Evolution's 404.
    ``wait_for(n)`` counts successful sends (sendText + sendMedia answered 201).
    """

    name = "fake-evolution"

    def __init__(
        self,
        api_key: str | None = DEFAULT_API_KEY,
        *,
        accept_any_instance: bool = True,
        port: int = 0,
        push_name: str = "Você",
    ) -> None:
        super().__init__(port=port)
        self.api_key = api_key
        self.accept_any_instance = accept_any_instance
        self._default_accept_any = accept_any_instance
        self.push_name = push_name
        #: Numbers (digits, or full JIDs) that "are not on WhatsApp": sends to them answer 400.
        self.not_on_whatsapp: set[str] = set()
        self._instances: dict[str, FakeInstance] = {}
        self._ilock = threading.RLock()

    # --- inspection helpers -------------------------------------------------------------------
    def sends(self) -> list[RecordedRequest]:
        """Successful sendText / sendMedia requests (answered 201), in arrival order."""
        with self._lock:
            return [r for r in self._requests if _is_send(r.path) and r.status == 201]

    def sent_texts(self) -> list[dict[str, Any]]:
        """JSON bodies of successful sendText requests."""
        with self._lock:
            return [r.body for r in self._requests if r.path.startswith("/message/sendText/") and r.status == 201]

    def sent_media(self) -> list[dict[str, Any]]:
        """JSON bodies of successful sendMedia requests."""
        with self._lock:
            return [r.body for r in self._requests if r.path.startswith("/message/sendMedia/") and r.status == 201]

    def sent_message_ids(self) -> list[str]:
        """``key.id`` of every successful send, in order (what the hub stores as external_id)."""
        with self._lock:
            return [r.response["key"]["id"] for r in self._requests if _is_send(r.path) and r.status == 201]

    def _wait_items(self) -> list[Any]:
        return [r for r in self._requests if _is_send(r.path) and r.status == 201]

    def instances(self) -> dict[str, dict[str, Any]]:
        with self._ilock:
            return {name: inst.snapshot() for name, inst in self._instances.items()}

    def instance(self, name: str) -> dict[str, Any] | None:
        with self._ilock:
            inst = self._instances.get(name)
            return inst.snapshot() if inst else None

    def has_instance(self, name: str) -> bool:
        with self._ilock:
            return name in self._instances

    # --- controls -----------------------------------------------------------------------------
    def add_instance(
        self,
        name: str,
        *,
        state: str = "open",
        token: str | None = None,
        integration: str = "WHATSAPP-BAILEYS",
        owner_jid: str | None = None,
    ) -> dict[str, Any]:
        """Pre-seed an instance as if created earlier (default: connected)."""
        with self._ilock:
            inst = FakeInstance(
                name=name,
                instance_id=str(uuid.uuid4()),
                token=token or str(uuid.uuid4()).upper(),
                integration=integration,
                state=state,
                owner_jid=owner_jid,
            )
            self._instances[name] = inst
            return inst.snapshot()

    def set_state(self, name: str, state: str) -> None:
        """Change an instance's connection state (``open`` / ``connecting`` / ``close``)."""
        with self._ilock:
            self._instances[name].state = state

    def remove_instance(self, name: str) -> None:
        with self._ilock:
            self._instances.pop(name, None)

    def reset(self) -> None:
        super().reset()
        with self._ilock:
            self._instances.clear()
        self.not_on_whatsapp.clear()
        self.accept_any_instance = self._default_accept_any

    # --- protocol -----------------------------------------------------------------------------
    def error_response(self, status: int, message: Any) -> Response:
        return Response(status, envelope(status, message))

    def _authorized(self, request: RecordedRequest, instance_name: str | None) -> bool:
        if self.api_key is None:
            return True
        provided = request.headers.get("apikey")
        if not provided:
            return False
        if secrets.compare_digest(provided.encode(), self.api_key.encode()):
            return True
        if instance_name is not None:
            with self._ilock:
                inst = self._instances.get(instance_name)
                return inst is not None and secrets.compare_digest(provided.encode(), inst.token.encode())
        return False

    async def handle(self, request: RecordedRequest) -> Response:
        parts = [p for p in request.path.split("/") if p]
        instance_name = parts[2] if len(parts) >= 3 else None
        if not self._authorized(request, instance_name):
            return self.error_response(401, "Unauthorized")
        method = request.method
        route = "/".join(parts[:2])
        if method == "POST" and parts == ["instance", "create"]:
            return self._create(request)
        if method == "GET" and parts == ["instance", "fetchInstances"]:
            return self._fetch_instances(request)
        if instance_name is None or len(parts) != 3:
            return self._not_found(request)
        handlers = {
            ("GET", "instance/connectionState"): self._connection_state,
            ("GET", "instance/connect"): self._connect,
            ("DELETE", "instance/delete"): self._delete,
            ("DELETE", "instance/logout"): self._logout,
            ("POST", "instance/restart"): self._restart,
            ("POST", "webhook/set"): self._webhook_set,
            ("GET", "webhook/find"): self._webhook_find,
            ("POST", "message/sendText"): self._send_text,
            ("POST", "message/sendMedia"): self._send_media,
        }
        handler = handlers.get((method, route))
        if handler is None:
            return self._not_found(request)
        return handler(request, instance_name)

    def _not_found(self, request: RecordedRequest) -> Response:
        return self.error_response(404, [f"Cannot {request.method} {request.path}"])

    def _missing_instance(self, name: str) -> Response:
        return self.error_response(404, [f'The "{name}" instance does not exist'])

    @staticmethod
    def _validation(body: Any, required: tuple[str, ...]) -> Response | None:
        if not isinstance(body, dict):
            return Response(400, envelope(400, ["instance is not of a type(s) object"]))
        missing = [f'instance requires property "{k}"' for k in required if k not in body]
        if missing:
            return Response(400, envelope(400, missing))
        empty = [f'The "{k}" cannot be empty' for k in required if body[k] in ("", None)]
        if empty:
            return Response(400, envelope(400, empty))
        return None

    # instance ---------------------------------------------------------------------------------
    def _create(self, request: RecordedRequest) -> Response:
        body = request.body
        if (bad := self._validation(body, ("instanceName",))) is not None:
            return bad
        name = str(body["instanceName"])
        integration = body.get("integration") or "WHATSAPP-BAILEYS"
        if integration not in INTEGRATIONS:
            return self.error_response(400, ["Invalid integration"])
        wants_qr = bool(body.get("qrcode")) or bool(body.get("number"))
        with self._ilock:
            if name in self._instances:
                return self.error_response(403, [f'This name "{name}" is already in use.'])
            inst = FakeInstance(
                name=name,
                instance_id=str(uuid.uuid4()),
                token=str(body.get("token") or str(uuid.uuid4()).upper()),
                integration=integration,
                state="connecting" if wants_qr else "close",
                number=body.get("number"),
                settings={k: body.get(k, default) for k, default in _SETTING_KEYS.items()},
            )
            webhook = body.get("webhook")
            if isinstance(webhook, dict) and webhook.get("url"):
                inst.webhook = {
                    "url": webhook["url"],
                    "headers": webhook.get("headers") or {},
                    "enabled": True,
                    "events": webhook.get("events") or [],
                    "webhookByEvents": bool(webhook.get("byEvents", False)),
                    "webhookBase64": bool(webhook.get("base64", False)),
                }
            qrcode = self._new_qr(inst, with_pairing=bool(body.get("number"))) if wants_qr else None
            self._instances[name] = inst
        hook = inst.webhook or {}
        result: dict[str, Any] = {
            "instance": {
                "instanceName": inst.name,
                "instanceId": inst.instance_id,
                "integration": inst.integration,
                "webhookWaBusiness": None,
                "accessTokenWaBusiness": "",
                "status": inst.state,
            },
            "hash": inst.token,
            "webhook": {
                "webhookUrl": hook.get("url"),
                "webhookHeaders": hook.get("headers"),
                "webhookByEvents": hook.get("webhookByEvents", False),
                "webhookBase64": hook.get("webhookBase64", False),
            },
            "websocket": {},
            "rabbitmq": {},
            "nats": {},
            "sqs": {},
            "settings": dict(inst.settings),
        }
        if qrcode is not None:
            result["qrcode"] = qrcode
        return Response(201, result)

    def _new_qr(self, inst: FakeInstance, *, with_pairing: bool) -> dict[str, Any]:
        code = _qr_code_string()
        inst.qr_count += 1
        return {
            "pairingCode": _pairing_code() if with_pairing else None,
            "code": code,
            "base64": qr_data_uri(code),
            "count": inst.qr_count,
        }

    def _get(self, name: str) -> FakeInstance | None:
        with self._ilock:
            return self._instances.get(name)

    def _connection_state(self, request: RecordedRequest, name: str) -> Response:
        inst = self._get(name)
        if inst is None:
            return self._missing_instance(name)
        return Response(200, {"instance": {"instanceName": name, "state": inst.state}})

    def _connect(self, request: RecordedRequest, name: str) -> Response:
        with self._ilock:
            inst = self._instances.get(name)
            if inst is None:
                return self._missing_instance(name)
            if inst.state == "open":
                return Response(200, {"instance": {"instanceName": name, "state": "open"}})
            inst.state = "connecting"
            number = request.query.get("number")
            if number:
                inst.number = number
            return Response(200, self._new_qr(inst, with_pairing=bool(number)))

    def _delete(self, request: RecordedRequest, name: str) -> Response:
        with self._ilock:
            if self._instances.pop(name, None) is None:
                return self._missing_instance(name)
        return Response(200, {"status": "SUCCESS", "error": False, "response": {"message": "Instance deleted"}})

    def _logout(self, request: RecordedRequest, name: str) -> Response:
        with self._ilock:
            inst = self._instances.get(name)
            if inst is None:
                return self._missing_instance(name)
            if inst.state == "close":
                return self.error_response(400, [f'The "{name}" instance is not connected'])
            inst.state = "close"
        return Response(200, {"status": "SUCCESS", "error": False, "response": {"message": "Instance logged out"}})

    def _restart(self, request: RecordedRequest, name: str) -> Response:
        inst = self._get(name)
        if inst is None:
            return self._missing_instance(name)
        return Response(200, {"instance": {"instanceName": name, "state": inst.state}})

    def _fetch_instances(self, request: RecordedRequest) -> Response:
        wanted = request.query.get("instanceName")
        with self._ilock:
            rows = [
                {
                    "id": inst.instance_id,
                    "name": inst.name,
                    "connectionStatus": inst.state,
                    "ownerJid": inst.owner_jid,
                    "profileName": inst.profile_name,
                    "profilePicUrl": None,
                    "integration": inst.integration,
                    "number": inst.number,
                    "token": inst.token,
                    "clientName": "evolution",
                    "createdAt": inst.created_at,
                    "updatedAt": inst.created_at,
                    "Setting": dict(inst.settings),
                }
                for inst in self._instances.values()
                if wanted is None or inst.name == wanted
            ]
        return Response(200, rows)

    # webhook ----------------------------------------------------------------------------------
    def _webhook_set(self, request: RecordedRequest, name: str) -> Response:
        body = request.body
        if (bad := self._validation(body, ("webhook",))) is not None:
            return bad
        hook = body["webhook"]
        if not isinstance(hook, dict):
            return self.error_response(400, ["webhook is not of a type(s) object"])
        required = ("enabled", "url") if hook.get("enabled", True) else ("enabled",)
        if (bad := self._validation(hook, required)) is not None:
            return bad
        with self._ilock:
            inst = self._instances.get(name)
            if inst is None:
                return self._missing_instance(name)
            enabled = bool(hook.get("enabled"))
            now = _now_iso()
            inst.webhook = {
                "id": "cm" + secrets.token_hex(11),
                "url": hook.get("url", ""),
                "headers": hook.get("headers") or {},
                "enabled": enabled,
                "events": (hook.get("events") or []) if enabled else [],
                "webhookByEvents": bool(hook.get("byEvents", False)),
                "webhookBase64": bool(hook.get("base64", False)),
                "createdAt": now,
                "updatedAt": now,
                "instanceId": inst.instance_id,
            }
            return Response(201, dict(inst.webhook))

    def _webhook_find(self, request: RecordedRequest, name: str) -> Response:
        inst = self._get(name)
        if inst is None:
            return self._missing_instance(name)
        return Response(200, dict(inst.webhook) if inst.webhook else None)

    # messages ---------------------------------------------------------------------------------
    def _sender_instance(self, name: str) -> tuple[str | None, Response | None]:
        inst = self._get(name)
        if inst is not None:
            return inst.instance_id, None
        if self.accept_any_instance:
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"evolution-instance:{name}")), None
        return None, self._missing_instance(name)

    def _check_number(self, number: str) -> Response | None:
        jid = jid_for(number)
        digits = jid.split("@", 1)[0]
        if number in self.not_on_whatsapp or jid in self.not_on_whatsapp or digits in self.not_on_whatsapp:
            return self.error_response(400, [{"jid": jid, "exists": False, "number": number}])
        return None

    def _prepared(
        self, instance_id: str, number: str, message: dict[str, Any], message_type: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": {"remoteJid": jid_for(number), "fromMe": True, "id": message_id()},
            "pushName": self.push_name,
            "status": "PENDING",
            "message": message,
            "messageType": message_type,
            "messageTimestamp": int(time.time()),
            "instanceId": instance_id,
            "source": "web",
        }
        quoted = body.get("quoted")
        if isinstance(quoted, dict) and isinstance(quoted.get("key"), dict):
            out["contextInfo"] = {
                "stanzaId": quoted["key"].get("id"),
                "quotedMessage": quoted.get("message") or {},
            }
        return out

    def _send_text(self, request: RecordedRequest, name: str) -> Response:
        body = request.body
        if (bad := self._validation(body, ("number", "text"))) is not None:
            return bad
        if not isinstance(body["text"], str) or not isinstance(body["number"], str):
            return self.error_response(400, ["number and text must be strings"])
        instance_id, missing = self._sender_instance(name)
        if missing is not None or instance_id is None:
            return missing or self._missing_instance(name)
        if (bad := self._check_number(body["number"])) is not None:
            return bad
        result = self._prepared(instance_id, body["number"], {"conversation": body["text"]}, "conversation", body)
        return Response(201, result)

    def _send_media(self, request: RecordedRequest, name: str) -> Response:
        body = request.body
        if (bad := self._validation(body, ("number", "mediatype", "media"))) is not None:
            return bad
        mediatype = body["mediatype"]
        if mediatype not in MEDIA_TYPES:
            return self.error_response(400, [f"instance.mediatype is not one of enum values: {','.join(MEDIA_TYPES)}"])
        if not isinstance(body["media"], str) or not isinstance(body["number"], str):
            return self.error_response(400, ["number and media must be strings"])
        instance_id, missing = self._sender_instance(name)
        if missing is not None or instance_id is None:
            return missing or self._missing_instance(name)
        if (bad := self._check_number(body["number"])) is not None:
            return bad
        media = body["media"]
        content: dict[str, Any] = {
            "url": media if media.startswith(("http://", "https://")) else "https://mmg.whatsapp.net/fake-upload",
            "mimetype": body.get("mimetype") or _default_mime(mediatype),
        }
        if body.get("caption"):
            content["caption"] = body["caption"]
        if body.get("fileName"):
            content["fileName"] = body["fileName"]
        key = f"{mediatype}Message"
        result = self._prepared(instance_id, body["number"], {key: content}, key, body)
        return Response(201, result)


def _is_send(path: str) -> bool:
    return path.startswith(("/message/sendText/", "/message/sendMedia/"))


def _default_mime(mediatype: str) -> str:
    return {
        "image": "image/jpeg",
        "video": "video/mp4",
        "audio": "audio/ogg; codecs=opus",
        "document": "application/octet-stream",
    }[mediatype]
