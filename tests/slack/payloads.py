"""Slack Events API payloads for the tests, composed from the documented shapes.

Envelope: ``{token, team_id, api_app_id, event, type: "event_callback", event_id, event_time,
authorizations[], is_ext_shared_channel, event_context}``. ``message`` events carry ``channel``,
``channel_type``, ``user``, ``text``, ``ts``, ``event_ts``, ``client_msg_id``, ``team`` (+ ``thread_ts`` and
``parent_user_id`` in threads); bots carry ``bot_id`` (+ ``bot_profile``) or ``subtype: bot_message``;
``message_changed`` nests ``message`` (original ``ts``) and ``previous_message``; ``app_mention`` is its own
event type without ``channel_type``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

TEAM = "T0ACME001"
APP = "A0HUBAPP1"
BOT_USER = "U0HUBBOT1"
BOT_ID = "B0HUBBOT1"
USER = "U0MARIA01"
CHANNEL = "C0SUPPORT"
DM = "D0MARIADM"

_seq = itertools.count(1)


def new_ts() -> str:
    """A fresh, unique Slack ``ts`` near now (fractions below .500000: the fake Slack's posts use the rest)."""
    return f"{int(time.time())}.{next(_seq) % 500000:06d}"


def envelope(event: dict[str, Any], *, team: str = TEAM, app: str = APP, event_id: str | None = None) -> dict[str, Any]:
    return {
        "token": "XXYYZZverificationtoken",
        "team_id": team,
        "api_app_id": app,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_seq):010d}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team,
                "user_id": BOT_USER,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-eyJldCI6Im1lc3NhZ2UifQ",
    }


def _blocks(text: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "rich_text",
            "block_id": "bN8xq",
            "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}],
        }
    ]


def message_event(
    text: str,
    *,
    channel: str = CHANNEL,
    channel_type: str = "channel",
    ts: str | None = None,
    user: str = USER,
    thread_ts: str | None = None,
    team: str = TEAM,
) -> dict[str, Any]:
    ts = ts or new_ts()
    event: dict[str, Any] = {
        "client_msg_id": f"cmid-{ts}",
        "type": "message",
        "text": text,
        "user": user,
        "ts": ts,
        "team": team,
        "blocks": _blocks(text),
        "channel": channel,
        "event_ts": ts,
        "channel_type": channel_type,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
        event["parent_user_id"] = user
    return event


def app_mention_event(text: str, *, channel: str = CHANNEL, ts: str | None = None, user: str = USER) -> dict[str, Any]:
    ts = ts or new_ts()
    return {
        "client_msg_id": f"cmid-{ts}",
        "type": "app_mention",
        "text": text,
        "user": user,
        "ts": ts,
        "team": TEAM,
        "blocks": _blocks(text),
        "channel": channel,
        "event_ts": ts,
    }


def own_bot_message_event(
    text: str, *, ts: str, channel: str = CHANNEL, thread_ts: str | None = None
) -> dict[str, Any]:
    """What Slack sends back when the app itself posted (modern bot: ``bot_id`` + ``bot_profile`` + bot user)."""
    event: dict[str, Any] = {
        "bot_id": BOT_ID,
        "type": "message",
        "text": text,
        "user": BOT_USER,
        "ts": ts,
        "app_id": APP,
        "team": TEAM,
        "bot_profile": {"id": BOT_ID, "deleted": False, "name": "acme-hub", "app_id": APP, "team_id": TEAM},
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel",
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def classic_bot_message_event(text: str, *, channel: str = CHANNEL, ts: str | None = None) -> dict[str, Any]:
    ts = ts or new_ts()
    return {
        "type": "message",
        "subtype": "bot_message",
        "text": text,
        "ts": ts,
        "username": "classic-bot",
        "bot_id": "B0CLASSIC",
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel",
    }


def message_changed_event(original_ts: str, old: str, new: str, *, channel: str = CHANNEL) -> dict[str, Any]:
    ts = new_ts()
    return {
        "type": "message",
        "subtype": "message_changed",
        "message": {
            "type": "message",
            "text": new,
            "user": USER,
            "team": TEAM,
            "edited": {"user": USER, "ts": ts.split(".")[0] + ".000000"},
            "blocks": _blocks(new),
            "client_msg_id": f"cmid-{original_ts}",
            "ts": original_ts,
        },
        "previous_message": {"type": "message", "text": old, "user": USER, "team": TEAM, "ts": original_ts},
        "channel": channel,
        "hidden": True,
        "ts": ts,
        "event_ts": ts,
        "channel_type": "channel",
    }


def message_deleted_event(original_ts: str, old: str, *, channel: str = CHANNEL) -> dict[str, Any]:
    ts = new_ts()
    return {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "channel": channel,
        "ts": ts,
        "deleted_ts": original_ts,
        "event_ts": ts,
        "previous_message": {"type": "message", "text": old, "user": USER, "ts": original_ts},
        "channel_type": "channel",
    }


def file_share_event(text: str, *, channel: str = CHANNEL, ts: str | None = None) -> dict[str, Any]:
    event = message_event(text, channel=channel, ts=ts)
    event["subtype"] = "file_share"
    event["files"] = [
        {
            "id": "F0INVOICE1",
            "created": 1761057000,
            "name": "invoice-4521.pdf",
            "title": "Invoice 4521",
            "mimetype": "application/pdf",
            "filetype": "pdf",
            "user": USER,
            "size": 48213,
            "mode": "hosted",
            "url_private": "https://files.slack.com/files-pri/T0ACME001-F0INVOICE1/invoice-4521.pdf",
            "url_private_download": "https://files.slack.com/files-pri/T0ACME001-F0INVOICE1/download/invoice-4521.pdf",
            "permalink": "https://acme.slack.com/files/U0MARIA01/F0INVOICE1/invoice-4521.pdf",
        },
        {"id": "F0GONE0001", "mode": "tombstone"},
    ]
    return event


def url_verification(challenge: str = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P") -> dict[str, Any]:
    return {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"}
