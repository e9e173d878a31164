"""Realistic Discord payloads for the tests, shaped like Discord's documented examples (API v10).

Ids are snowflakes in the ``1x00000000000000xx`` style; message ids are fresh (time-based) so that
interaction tokens are "recent" and every test's messages are distinct.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from nacl.signing import SigningKey

# TEST-ONLY Ed25519 key: seed 0x01..0x20 (the vector below was computed with it).
TEST_SEED = bytes(range(1, 33))
TEST_PUBLIC_KEY = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
# A known-good vector for that key (timestamp + body signed as Discord does).
VECTOR_TIMESTAMP = "1761057130"
VECTOR_BODY = (
    '{"id":"1310000000000000010","application_id":"1300000000000000001","type":1,'
    '"token":"aW50ZXJhY3Rpb246MTMxMDAwMDAwMDAwMDAwMDAxMDpUT0tFTg","version":1}'
)
VECTOR_SIGNATURE = (
    "46de5fd044e3c6010dafa6e569db2df0d1b398d3effa9fcfd6581ba9019b6e92"
    "8c5c3abc2cb328984ad5c68b124deb2871cccd86912f2928b807dafa6cd74706"
)

GUILD_ID = "1200000000000000002"
CHANNEL_ID = "1100000000000000003"  # #support
OTHER_CHANNEL_ID = "1100000000000000005"  # #general
THREAD_ID = "1100000000000000007"  # a thread under #support
DM_CHANNEL_ID = "1100000000000000009"
USER_ID = "1000000000000000004"
OTHER_BOT_ID = "1000000000000000008"
WEBHOOK_ID = "1000000000000000010"

_counter = itertools.count(1)


def signing_key(seed: bytes = TEST_SEED) -> SigningKey:
    return SigningKey(seed)


def public_key_hex(key: SigningKey) -> str:
    return bytes(key.verify_key).hex()


def fresh_id() -> str:
    """A snowflake for "now" (unique within the test run)."""
    millis = int(time.time() * 1000) - 1_420_070_400_000
    return str((millis << 22) | (next(_counter) & 0x3FFFFF))


def user(user_id: str = USER_ID, username: str = "maria.silva", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": user_id,
        "username": username,
        "discriminator": "0",
        "global_name": "Maria Silva" if username == "maria.silva" else None,
        "avatar": "a_d5efa99b3eeaa7dd43acca82f5692432",
        "public_flags": 0,
    }
    out.update(extra)
    return out


def bot_user(user_id: str, username: str = "acme-hub") -> dict[str, Any]:
    return {
        "id": user_id,
        "username": username,
        "discriminator": "4321",
        "global_name": None,
        "avatar": None,
        "bot": True,
        "public_flags": 524288,
    }


def member(nick: str | None = None) -> dict[str, Any]:
    return {
        "roles": ["1350000000000000050"],
        "premium_since": None,
        "pending": False,
        "nick": nick,
        "mute": False,
        "joined_at": "2023-03-13T19:19:14.040000+00:00",
        "flags": 0,
        "deaf": False,
        "communication_disabled_until": None,
        "banner": None,
        "avatar": None,
    }


def message_create(
    content: str,
    *,
    channel_id: str = CHANNEL_ID,
    guild: bool = True,
    author: dict[str, Any] | None = None,
    mentions: list[dict[str, Any]] | None = None,
    attachments: list[dict[str, Any]] | None = None,
    message_id: str | None = None,
    reply_to: str | None = None,
    channel_type: int | None = None,
    webhook_id: str | None = None,
    nick: str | None = None,
) -> dict[str, Any]:
    """The ``d`` of a gateway ``MESSAGE_CREATE`` (guild fields only when ``guild``)."""
    data: dict[str, Any] = {
        "type": 19 if reply_to else 0,
        "tts": False,
        "timestamp": "2025-10-21T14:32:10.512000+00:00",
        "pinned": False,
        "nonce": fresh_id(),
        "mentions": mentions or [],
        "mention_roles": [],
        "mention_everyone": False,
        "id": message_id or fresh_id(),
        "flags": 0,
        "embeds": [],
        "edited_timestamp": None,
        "content": content,
        "components": [],
        "channel_id": channel_id,
        "author": author or user(),
        "attachments": attachments or [],
    }
    if guild:
        data["guild_id"] = GUILD_ID
        data["member"] = member(nick)
        data["channel_type"] = 0 if channel_type is None else channel_type
    elif channel_type is not None:
        data["channel_type"] = channel_type
    if reply_to:
        data["message_reference"] = {
            "type": 0,
            "channel_id": channel_id,
            "message_id": reply_to,
            **({"guild_id": GUILD_ID} if guild else {}),
        }
    if webhook_id:
        data["webhook_id"] = webhook_id
        data.pop("member", None)
    return data


def attachment(
    filename: str = "invoice.pdf", content_type: str = "application/pdf", size: int = 48213
) -> dict[str, Any]:
    attachment_id = fresh_id()
    url = f"https://cdn.discordapp.com/attachments/{CHANNEL_ID}/{attachment_id}/{filename}"
    return {
        "id": attachment_id,
        "filename": filename,
        "size": size,
        "url": url,
        "proxy_url": url.replace("cdn.discordapp.com", "media.discordapp.net"),
        "content_type": content_type,
    }


def ready(bot_id: str, application_id: str, guild_ids: list[str], session_id: str = "fake-session") -> dict[str, Any]:
    return {
        "v": 10,
        "user": {**bot_user(bot_id), "verified": True, "mfa_enabled": False, "flags": 524288},
        "user_settings": {},
        "guilds": [{"id": g, "unavailable": True} for g in guild_ids],
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": "wss://gateway-us-east1-b.discord.gg",
        "shard": [0, 1],
        "application": {"id": application_id, "flags": 0},
        "_trace": ["gateway-prd-us-east1-b"],
    }


def guild_create(bot_id: str) -> dict[str, Any]:
    """``GUILD_CREATE`` for the test guild: #support (with an active thread) and #general."""

    def text_channel(channel_id: str, name: str, position: int) -> dict[str, Any]:
        return {
            "id": channel_id,
            "type": 0,
            "name": name,
            "position": position,
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }

    return {
        "id": GUILD_ID,
        "name": "Acme Support",
        "icon": None,
        "description": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "owner_id": USER_ID,
        "region": "us-east",
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 1,
        "default_message_notifications": 1,
        "explicit_content_filter": 2,
        "roles": [
            {
                "id": GUILD_ID,
                "name": "@everyone",
                "permissions": "1071698660929",
                "position": 0,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
                "flags": 0,
            }
        ],
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "system_channel_id": CHANNEL_ID,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "vanity_url_code": None,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "public_updates_channel_id": None,
        "nsfw_level": 0,
        "premium_progress_bar_enabled": False,
        "joined_at": "2025-10-01T12:00:00.000000+00:00",
        "large": False,
        "unavailable": False,
        "member_count": 3,
        "voice_states": [],
        "members": [
            {**member(), "user": bot_user(bot_id), "roles": []},
        ],
        "channels": [
            text_channel(CHANNEL_ID, "support", 0),
            text_channel(OTHER_CHANNEL_ID, "general", 1),
        ],
        "threads": [
            {
                "id": THREAD_ID,
                "guild_id": GUILD_ID,
                "parent_id": CHANNEL_ID,
                "owner_id": USER_ID,
                "type": 11,
                "name": "Order 4521",
                "last_message_id": None,
                "message_count": 1,
                "member_count": 2,
                "rate_limit_per_user": 0,
                "flags": 0,
                "total_message_sent": 1,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": "2025-10-21T14:00:00.000000+00:00",
                    "locked": False,
                    "create_timestamp": "2025-10-21T14:00:00.000000+00:00",
                },
            }
        ],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "application_command_counts": {},
    }


def interaction_command(
    application_id: str,
    *,
    name: str = "ask",
    options: list[dict[str, Any]] | None = None,
    guild: bool = True,
    channel_id: str = CHANNEL_ID,
    interaction_id: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """An APPLICATION_COMMAND (CHAT_INPUT) interaction as Discord POSTs it to the endpoint."""
    interaction_id = interaction_id or fresh_id()
    data: dict[str, Any] = {
        "app_permissions": "442368",
        "application_id": application_id,
        "attachment_size_limit": 10485760,
        "authorizing_integration_owners": {"0": GUILD_ID} if guild else {"1": USER_ID},
        "channel": {
            "flags": 0,
            "id": channel_id,
            "last_message_id": None,
            "name": "support",
            "nsfw": False,
            "parent_id": None,
            "permissions": "2248473465835073",
            "position": 0,
            "rate_limit_per_user": 0,
            "topic": None,
            "type": 0,
            **({"guild_id": GUILD_ID} if guild else {}),
        },
        "channel_id": channel_id,
        "context": 0 if guild else 1,
        "data": {
            "id": "1330000000000000030",
            "name": name,
            "type": 1,
            "options": options
            if options is not None
            else [{"name": "question", "type": 3, "value": "Is order 4521 shipped?"}],
        },
        "entitlements": [],
        "id": interaction_id,
        "locale": "pt-BR",
        "token": token or f"interaction-token-{interaction_id}",
        "type": 2,
        "version": 1,
    }
    if guild:
        data["guild"] = {"features": [], "id": GUILD_ID, "locale": "en-US"}
        data["guild_id"] = GUILD_ID
        data["guild_locale"] = "en-US"
        data["member"] = {**member(), "permissions": "2248473465835073", "user": user()}
    else:
        data["user"] = user()
    return data


def ping(application_id: str) -> dict[str, Any]:
    return {
        "id": fresh_id(),
        "application_id": application_id,
        "type": 1,
        "token": "aW50ZXJhY3Rpb246MTMxMDAwMDAwMDAwMDAwMDAxMDpUT0tFTg",
        "version": 1,
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_headers(key: SigningKey, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    ts = timestamp if timestamp is not None else str(int(time.time()))
    signature = key.sign(ts.encode() + body).signature.hex()
    return {"content-type": "application/json", "x-signature-ed25519": signature, "x-signature-timestamp": ts}
