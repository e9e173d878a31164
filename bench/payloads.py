"""A realistic Evolution v2 ``messages.upsert`` webhook body (about 1.4 KB), as a template.

The template is split at its variable parts so the wrk Lua script and the asyncio driver build the
very same bytes: ``instance``, ``remote_jid``, ``key_id`` and ``text`` (JSON-safe: no quotes, no
backslashes, no control characters).
"""

from __future__ import annotations

import json
from typing import Any

FIELDS = ("instance", "remote_jid", "key_id", "text")
_MARK = "@@{}@@"
OWNER = "5511900000001@s.whatsapp.net"


def _body_with_marks() -> str:
    data: dict[str, Any] = {
        "event": "messages.upsert",
        "instance": _MARK.format("instance"),
        "data": {
            "key": {
                "remoteJid": _MARK.format("remote_jid"),
                "fromMe": False,
                "id": _MARK.format("key_id"),
                "senderLid": "106097357230184@lid",
                "addressingMode": "pn",
            },
            "pushName": "Maria Souza",
            "status": "DELIVERY_ACK",
            "message": {
                "conversation": _MARK.format("text"),
                "messageContextInfo": {
                    "deviceListMetadata": {
                        "senderKeyHash": "Qm9vc3RlZCBrZXkgaGFzaCBmb3IgYmVuY2g=",
                        "senderTimestamp": "1764000000",
                        "senderAccountType": "E2EE",
                        "receiverAccountType": "E2EE",
                        "recipientKeyHash": "UmVjaXBpZW50IGtleSBoYXNoIGhlcmU=",
                        "recipientTimestamp": "1763990000",
                    },
                    "deviceListMetadataVersion": 2,
                    "messageSecret": "s0m3Rand0mS3cretValueF0rTheBenchmark12345678=",
                },
            },
            "contextInfo": {
                "expiration": 0,
                "ephemeralSettingTimestamp": "1763000000",
                "disappearingMode": {"initiator": "CHANGED_IN_CHAT", "trigger": "UNKNOWN"},
            },
            "messageType": "conversation",
            "messageTimestamp": 1764064800,
            "instanceId": "7d3f6a2e-5b1c-4c8e-9f0a-1b2c3d4e5f60",
            "source": "android",
            "chatwootMessageId": None,
            "chatwootInboxId": None,
            "chatwootConversationId": None,
        },
        "destination": "http://omni-hub.internal:8882/webhooks/evolution",
        "date_time": "2026-11-25T10:00:00.000Z",
        "sender": OWNER,
        "server_url": "http://evolution.internal:8080",
        "apikey": "B6D711FCDE4D4FD5936544120E713976",
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def template_parts() -> list[str]:
    """Constant segments between the variable fields, in :data:`FIELDS` order (len(FIELDS) + 1 parts)."""
    text = _body_with_marks()
    parts: list[str] = []
    for name in FIELDS:
        head, _, text = text.partition(_MARK.format(name))
        parts.append(head)
    parts.append(text)
    return parts


_PARTS = [p.encode() for p in template_parts()]
#: A typical customer message; the unique token in front makes each text joinable across processes.
FILLER = (
    "Olá! Gostaria de saber o status do meu pedido 48213, comprei na semana passada e ainda não "
    "recebi o código de rastreio. Podem me ajudar, por favor?"
)


def upsert(instance: str, remote_jid: str, key_id: str, text: str) -> bytes:
    p = _PARTS
    return b"".join(
        (p[0], instance.encode(), p[1], remote_jid.encode(), p[2], key_id.encode(), p[3], text.encode(), p[4])
    )


def phone_jid(chat: int) -> str:
    return f"55119{chat:08d}@s.whatsapp.net"
