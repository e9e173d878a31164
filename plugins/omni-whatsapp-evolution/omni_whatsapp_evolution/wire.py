"""Evolution REST wire format: request bodies the hub sends and parsers for the answers. Pure functions.

Kept apart from :mod:`client` so every byte the hub puts on the wire is unit-testable without a server.
Targets Evolution v2.2+ (the version whose shapes the tests pin); v1 differences are tolerated when parsing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from omni_core import InstanceInfo, Media, Message, QrCode
from omni_whatsapp_evolution.normalize import recipient_number

WEBHOOK_TOKEN_HEADER = "x-omni-webhook-token"
#: Events the hub subscribes to when it creates an instance; everything else is noise for it.
WEBHOOK_EVENTS = ("MESSAGES_UPSERT", "MESSAGES_UPDATE", "SEND_MESSAGE", "CONNECTION_UPDATE", "QRCODE_UPDATED")
INTEGRATION = "WHATSAPP-BAILEYS"
#: WhatsApp shows no caption on audio, so text must travel as its own message there.
_CAPTIONLESS = frozenset({"audio"})
_MAX_ERROR_DETAIL = 300

MediaType = Literal["image", "video", "audio", "document"]
Action = Literal["sendText", "sendMedia"]


class OutboundCall(NamedTuple):
    """One Evolution send request: ``POST /message/{action}/{instance}`` with ``body``."""

    action: Action
    body: dict[str, Any]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def evolution_config(config: Any) -> dict[str, Any]:
    """The ``evolution`` section of an instance config or create options (``{}`` when absent)."""
    section = config.get("evolution") if isinstance(config, Mapping) else None
    return section if isinstance(section, dict) else {}


def first_str(*values: Any) -> str | None:
    """The first non-empty string among ``values``."""
    return next((v for v in values if isinstance(v, str) and v.strip()), None)


def base_url(*candidates: Any) -> str | None:
    """The first configured base URL, without a trailing slash (paths are appended with ``/``)."""
    url = first_str(*candidates)
    return url.strip().rstrip("/") if url is not None else None


def webhook_url(tenant_id: str, evolution_webhook_url: str | None, hub_base_url: str) -> str:
    """Where Evolution should post this tenant's events: the tenant-scoped hub route."""
    root = (evolution_webhook_url or f"{hub_base_url.rstrip('/')}/webhooks/evolution").rstrip("/")
    return f"{root}/{tenant_id}"


# --- sending ------------------------------------------------------------------------------------------


def media_type_for(mime_type: str | None) -> MediaType:
    """Evolution's ``mediatype`` for a MIME type; anything not image/video/audio goes as a document."""
    major = (mime_type or "").split("/", 1)[0].strip().lower()
    if major in ("image", "video", "audio"):
        return major  # type: ignore[return-value]
    return "document"


def build_send_text_body(number: str, text: str, reply_to: str | None = None) -> dict[str, Any]:
    """Body of ``POST /message/sendText/{instance}`` (v2)."""
    body: dict[str, Any] = {"number": number, "text": text}
    if reply_to:
        body["quoted"] = {"key": {"id": reply_to}}
    return body


def build_send_media_body(
    number: str, media: Media, caption: str | None = None, reply_to: str | None = None
) -> dict[str, Any]:
    """Body of ``POST /message/sendMedia/{instance}`` (v2) for one media item sent by URL."""
    if not media.url:
        raise ValueError("media item has no url; Evolution needs a URL to fetch it from")
    body: dict[str, Any] = {
        "number": number,
        "mediatype": media_type_for(media.mime_type),
        "mimetype": media.mime_type,
        "media": media.url,
    }
    if caption:
        body["caption"] = caption
    if media.filename:
        body["fileName"] = media.filename
    if reply_to:
        body["quoted"] = {"key": {"id": reply_to}}
    return body


def plan_delivery(message: Message) -> list[OutboundCall]:
    """The Evolution requests that deliver ``message``, in order.

    Text alone -> one sendText. Media -> one sendMedia per item; the text rides as the caption of the
    first item when that item has none (and can show one), otherwise it follows as its own sendText so
    it is never dropped. Only the first request quotes ``reply_to``.
    """
    number = recipient_number(message.chat.id)
    text = message.content.text or None
    media = message.content.media
    if not media:
        if text is None:
            raise ValueError("message has neither text nor media to send")
        return [OutboundCall("sendText", build_send_text_body(number, text, message.reply_to))]

    calls: list[OutboundCall] = []
    text_sent = text is None or any(item.caption == text for item in media)
    for index, item in enumerate(media):
        caption = item.caption
        if index == 0 and not caption and not text_sent and media_type_for(item.mime_type) not in _CAPTIONLESS:
            caption, text_sent = text, True
        reply_to = message.reply_to if index == 0 else None
        try:
            calls.append(OutboundCall("sendMedia", build_send_media_body(number, item, caption, reply_to)))
        except ValueError as exc:
            raise ValueError(f"media[{index}]: {exc}") from None
    if not text_sent and text is not None:
        calls.append(OutboundCall("sendText", build_send_text_body(number, text)))
    return calls


def parse_send_response(body: Any) -> str | None:
    """The WhatsApp message id (``key.id``) from a sendText/sendMedia answer; ``None`` when absent."""
    key = body.get("key") if isinstance(body, Mapping) else None
    return _str(key.get("id")) if isinstance(key, Mapping) else None


# --- instance lifecycle ---------------------------------------------------------------------------------


def _webhook_config(webhook: str, webhook_token: str) -> dict[str, Any]:
    """The ``webhook`` object the hub sets on its instances: its events, posted to ``webhook`` with the token header."""
    return {
        "url": webhook,
        "byEvents": False,
        "base64": False,
        "headers": {WEBHOOK_TOKEN_HEADER: webhook_token},
        "events": list(WEBHOOK_EVENTS),
    }


def build_instance_create_body(
    instance_name: str, webhook: str, webhook_token: str, *, qrcode: bool = True
) -> dict[str, Any]:
    """Body of ``POST /instance/create`` (v2.2+ nested ``webhook``), authenticated back to the hub by header."""
    return {
        "instanceName": instance_name,
        "integration": INTEGRATION,
        "qrcode": qrcode,
        "webhook": _webhook_config(webhook, webhook_token),
    }


def build_webhook_set_body(webhook: str, webhook_token: str) -> dict[str, Any]:
    """Body of ``POST /webhook/set/{instance}`` (v2.2+): the webhook :func:`build_instance_create_body` sets,
    with ``enabled`` (required there; creation implies it). Replaces the instance's webhook whole."""
    return {"webhook": {"enabled": True, **_webhook_config(webhook, webhook_token)}}


def _qr_from(body: Mapping[str, Any]) -> QrCode | None:
    base64, code, pairing = _str(body.get("base64")), _str(body.get("code")), _str(body.get("pairingCode"))
    if base64 is None and code is None and pairing is None:
        return None
    return QrCode(status="qrcode", qrcode_base64=base64, code=code, pairing_code=pairing)


def parse_instance_create_response(body: Any) -> InstanceInfo:
    """``/instance/create`` answer -> state, the per-instance token and id to keep, and the first QR if any."""
    if not isinstance(body, Mapping):
        raise ValueError("instance/create answer is not a JSON object")
    instance: Mapping[str, Any] = body["instance"] if isinstance(body.get("instance"), Mapping) else {}
    token = body.get("hash")
    if isinstance(token, Mapping):  # v1 answered {"hash": {"apikey": "..."}}
        token = token.get("apikey")
    patch: dict[str, Any] = {}
    if (value := _str(token)) is not None:
        patch["instance_token"] = value
    if (value := _str(instance.get("instanceId"))) is not None:
        patch["instance_id"] = value
    qrcode = body.get("qrcode")
    return InstanceInfo(
        state=_str(instance.get("status")) or "created",
        config_patch={"evolution": patch} if patch else {},
        qr=_qr_from(qrcode) if isinstance(qrcode, Mapping) else None,
    )


def parse_connection_state(body: Any) -> InstanceInfo:
    """``/instance/connectionState`` answer ``{"instance": {"state": ...}}`` -> :class:`InstanceInfo`."""
    if isinstance(body, Mapping):
        instance = body.get("instance")
        state = _str(instance.get("state")) if isinstance(instance, Mapping) else None
        state = state or _str(body.get("state"))
        if state is not None:
            return InstanceInfo(state=state)
    raise ValueError("instance/connectionState answer has no 'instance.state'")


def parse_connect_response(body: Any) -> QrCode:
    """``/instance/connect`` answer -> a QR/pairing code, or the state when the instance is already linked.

    Evolution reports some failures here as HTTP 200 ``{"error": true, "message": ...}``; those raise.
    """
    if not isinstance(body, Mapping):
        raise ValueError("instance/connect answer is not a JSON object")
    instance = body.get("instance")
    if isinstance(instance, Mapping) and _str(instance.get("state")):
        return QrCode(status=str(instance["state"]))
    if body.get("error") is True:
        raise ValueError(error_detail(body) or "instance/connect reported an error")
    qr = _qr_from(body)
    # No code yet (Evolution still starting the socket): report that rather than inventing one.
    return qr if qr is not None else QrCode(status="connecting")


# --- errors ---------------------------------------------------------------------------------------------


def _describe(item: Any) -> str | None:
    if isinstance(item, str):
        return item or None
    if isinstance(item, Mapping):
        if item.get("exists") is False:
            who = _str(item.get("number")) or _str(item.get("jid")) or "recipient"
            return f"number {who} is not on WhatsApp"
        return _str(item.get("message")) or _str(item.get("error"))
    return None


def error_detail(body: Any) -> str | None:
    """The human part of Evolution's error envelope ``{status, error, response: {message}}`` (or ``{message}``)."""
    if isinstance(body, str):
        return body.strip()[:_MAX_ERROR_DETAIL] or None
    if not isinstance(body, Mapping):
        return None
    response = body.get("response")
    message = response.get("message") if isinstance(response, Mapping) else None
    if message is None:
        message = body.get("message")
    parts = [_describe(m) for m in message] if isinstance(message, list) else [_describe(message)]
    text = "; ".join(p for p in parts if p) or _str(body.get("error"))
    return text[:_MAX_ERROR_DETAIL] if text else None


def error_message(action: str, status_code: int, body: Any) -> str:
    """Short operator-facing error: ``"evolution sendText 400: number 5511... is not on WhatsApp"``."""
    detail = error_detail(body)
    return f"evolution {action} {status_code}: {detail}" if detail else f"evolution {action} {status_code}"
