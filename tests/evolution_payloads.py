"""Builders for Evolution 2.3 webhook bodies, shaped after the real server's output.

Values are made up; the shapes (envelope, key, message, messageType ...) follow Evolution's
``webhook.controller.ts`` and ``whatsapp.baileys.service.ts`` as described in the protocol notes.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

OWNER = "5511900000001@s.whatsapp.net"
_counter = itertools.count(1)


def key_id() -> str:
    return "3A" + uuid.uuid4().hex[:18].upper()


def envelope(event: str, instance: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": event,
        "instance": instance,
        "data": data,
        "destination": "http://hub.test/webhooks/evolution",
        "date_time": "2026-11-25T10:00:00.000Z",
        "sender": OWNER,
        "server_url": "http://evolution.test",
        "apikey": None,
    }


def upsert(
    instance: str,
    text: str = "Olá, tudo bem?",
    *,
    phone: str = "5511988880001",
    kid: str | None = None,
    from_me: bool = False,
    push_name: str = "Maria Souza",
    group: str | None = None,
    message: dict[str, Any] | None = None,
    message_type: str = "conversation",
    context_info: dict[str, Any] | None = None,
    event: str = "messages.upsert",
) -> dict[str, Any]:
    key: dict[str, Any] = {"fromMe": from_me, "id": kid or key_id(), "addressingMode": "pn"}
    if group:
        key["remoteJid"] = group
        key["participant"] = f"{phone}@s.whatsapp.net"
    else:
        key["remoteJid"] = f"{phone}@s.whatsapp.net"
    data: dict[str, Any] = {
        "key": key,
        "pushName": push_name,
        "status": "SERVER_ACK" if from_me else "DELIVERY_ACK",
        "message": message if message is not None else {"conversation": text},
        "messageType": message_type,
        "messageTimestamp": int(time.time()) + next(_counter) % 1,
        "instanceId": str(uuid.uuid5(uuid.NAMESPACE_DNS, instance)),
        "source": "android",
    }
    if context_info:
        data["contextInfo"] = context_info
    return envelope(event, instance, data)


def status_update(instance: str, kid: str, status: str, phone: str = "5511988880001") -> dict[str, Any]:
    return envelope(
        "messages.update",
        instance,
        {
            "keyId": kid,
            "remoteJid": f"{phone}@s.whatsapp.net",
            "fromMe": True,
            "status": status,
            "instanceId": str(uuid.uuid5(uuid.NAMESPACE_DNS, instance)),
            "messageId": "cm" + uuid.uuid4().hex[:20],
        },
    )


def connection_update(instance: str, state: str, reason: int) -> dict[str, Any]:
    data: dict[str, Any] = {"instance": instance, "state": state, "statusReason": reason}
    if state == "open":
        data.update({"wuid": OWNER, "profileName": "Loja Teste", "profilePictureUrl": None})
    return envelope("connection.update", instance, data)


PNG_1PX = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def qrcode_updated(instance: str, code: str = "2@abc,def,ghi") -> dict[str, Any]:
    return envelope(
        "qrcode.updated",
        instance,
        {"qrcode": {"instance": instance, "pairingCode": None, "code": code, "base64": PNG_1PX}},
    )
