"""Pure helpers for the Discord wire: instance config, request signatures, and how a reply is cut into posts.

Nothing here does I/O; :mod:`omni_discord.client` makes the calls.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from omni_core.text import split_for_sending
from omni_discord.normalize import snowflake, snowflake_time

#: Discord's limit on a message's ``content``.
TEXT_LIMIT = 2000
#: Files per message.
FILES_PER_MESSAGE = 10
#: Interaction requests whose ``X-Signature-Timestamp`` is further than this from the hub's clock are
#: rejected (401) even with a valid signature, so a captured request cannot be replayed later.
SIGNATURE_MAX_AGE_SECONDS = 300
#: An interaction token is valid for 15 minutes; after this the reply goes to the channel instead.
INTERACTION_TOKEN_TTL = timedelta(minutes=15) - timedelta(seconds=30)
#: Message flag set on a deferred interaction response until it is edited ("Bot is thinking...").
FLAG_LOADING = 1 << 7

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_HEX_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")


# --- instance config -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscordConfig:
    """What an instance needs: the bot token (gateway + REST), the application id and public key
    (interactions), and channels where every message counts (not only mentions)."""

    bot_token: str
    application_id: str
    public_key: str
    listen_channels: tuple[str, ...] = ()

    def patch(self) -> dict[str, Any]:
        """The normalized values, as a config merge-patch."""
        return {
            "bot_token": self.bot_token,
            "application_id": self.application_id,
            "public_key": self.public_key,
            "listen_channels": list(self.listen_channels),
        }


def parse_config(config: Mapping[str, Any]) -> DiscordConfig:
    """Validate and normalize an instance's config; :class:`ValueError` names the first bad field."""
    token = config.get("bot_token")
    if not isinstance(token, str) or not token.strip():
        raise ValueError("bot_token is required (the bot's token from the Discord developer portal)")
    token = token.strip()
    if token.lower().startswith("bot "):
        token = token[4:].strip()
    if not token or any(ch.isspace() for ch in token):
        raise ValueError("bot_token must be one word without spaces")
    application_id = snowflake(config.get("application_id"))
    if application_id is None:
        raise ValueError("application_id is required: the application's id (a snowflake such as 1300000000000000001)")
    public_key = config.get("public_key")
    if not isinstance(public_key, str) or not _HEX_KEY.fullmatch(public_key.strip()):
        raise ValueError("public_key is required: the application's public key (64 hex characters)")
    raw_channels = config.get("listen_channels")
    channels: list[str] = []
    if raw_channels is not None:
        if not isinstance(raw_channels, list):
            raise ValueError("listen_channels must be a list of channel ids")
        for item in raw_channels:
            channel = snowflake(item)
            if channel is None:
                raise ValueError(f"listen_channels: {item!r} is not a channel id")
            if channel not in channels:
                channels.append(channel)
    return DiscordConfig(
        bot_token=token,
        application_id=application_id,
        public_key=public_key.strip().lower(),
        listen_channels=tuple(channels),
    )


def check_application(app: Mapping[str, Any], config: DiscordConfig) -> None:
    """The bot token's application (``GET /oauth2/applications/@me``) must be the configured one."""
    app_id = snowflake(app.get("id"))
    if app_id != config.application_id:
        raise ValueError(f"application_id {config.application_id} does not match the bot token's application {app_id}")
    verify_key = app.get("verify_key")
    if isinstance(verify_key, str) and verify_key.lower() != config.public_key:
        raise ValueError("public_key does not match the application's public key (verify_key)")


# --- interaction signatures ----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _verify_key(public_key_hex: str) -> VerifyKey:
    return VerifyKey(bytes.fromhex(public_key_hex))


def signature_problem(
    public_key_hex: str, signature_hex: str | None, timestamp: str | None, body: bytes, now: float
) -> str | None:
    """Why an interactions request is not authentic (``None`` when it is).

    Discord signs ``timestamp + raw body`` with Ed25519; the timestamp (unix seconds) must also be within
    :data:`SIGNATURE_MAX_AGE_SECONDS` of ``now``.
    """
    if not signature_hex or not timestamp:
        return "missing X-Signature-Ed25519 or X-Signature-Timestamp"
    if not _HEX_SIGNATURE.fullmatch(signature_hex):
        return "X-Signature-Ed25519 is not a hex Ed25519 signature"
    try:
        sent = int(timestamp)
    except ValueError:
        return "X-Signature-Timestamp is not unix seconds"
    if abs(now - sent) > SIGNATURE_MAX_AGE_SECONDS:
        return "X-Signature-Timestamp is stale (more than 5 minutes from the hub's clock)"
    try:
        _verify_key(public_key_hex).verify(timestamp.encode() + body, bytes.fromhex(signature_hex))
    except (BadSignatureError, ValueError):
        return "invalid request signature"
    return None


# --- delivery ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """One Discord message to create: its text, which of the prepared files it carries, what it replies to."""

    content: str | None
    files: tuple[int, ...] = ()
    reference: str | None = None
    nonce: str | None = None


def nonce_for(seed: str, index: int) -> str:
    """A stable nonce (<= 25 characters) per hub message and part: with ``enforce_nonce`` Discord answers a
    retried post with the message it already created instead of posting it twice."""
    return hashlib.sha256(seed.encode()).hexdigest()[:22] + f"{index:03d}"


def plan_posts(
    text: str | None,
    file_count: int,
    *,
    reply_to: str | None,
    seed: str,
    limit: int = TEXT_LIMIT,
    with_nonce: bool = True,
) -> list[Post]:
    """The posts for one hub message, in order.

    The text is split at natural boundaries into parts of at most ``limit`` characters; files ride on the last
    text part (at most 10 per message, more follow in their own messages); only the first post replies to
    ``reply_to``.
    """
    parts: list[str | None] = list(split_for_sending(text or "", limit))
    groups = [
        tuple(range(start, min(start + FILES_PER_MESSAGE, file_count)))
        for start in range(0, file_count, FILES_PER_MESSAGE)
    ]
    posts: list[tuple[str | None, tuple[int, ...]]] = [(part, ()) for part in parts]
    for number, group in enumerate(groups):
        if number == 0 and posts:
            posts[-1] = (posts[-1][0], group)
        else:
            posts.append((None, group))
    return [
        Post(
            content=content,
            files=files,
            reference=reply_to if index == 0 else None,
            nonce=nonce_for(seed, index) if with_nonce else None,
        )
        for index, (content, files) in enumerate(posts)
    ]


def compose_text(text: str | None, captions: Sequence[str], links: Sequence[str]) -> str:
    """The message text, else the media captions; links to files too large to upload go at the end."""
    body = (text or "").strip() or "\n".join(c for c in captions if c.strip())
    if links:
        body = "\n".join([body, *links]) if body else "\n".join(links)
    return body


@dataclass(frozen=True)
class InteractionTarget:
    """Where the reply to a slash command goes: the interaction's webhook."""

    interaction_id: str
    application_id: str
    token: str


def interaction_target(metadata: Mapping[str, Any], now: datetime) -> InteractionTarget | None:
    """The interaction to answer, when ``metadata`` is an inbound slash command's and its token is still valid."""
    interaction_id = snowflake(metadata.get("interaction_id"))
    application_id = snowflake(metadata.get("application_id"))
    token = metadata.get("interaction_token")
    if interaction_id is None or application_id is None or not isinstance(token, str) or not token:
        return None
    if now - snowflake_time(interaction_id) > INTERACTION_TOKEN_TTL:
        return None
    return InteractionTarget(interaction_id=interaction_id, application_id=application_id, token=token)


def is_deferred_original(message: Any) -> bool:
    """Whether an interaction's original response is still the deferred "thinking..." placeholder."""
    if not isinstance(message, dict):
        return False
    flags = message.get("flags")
    return isinstance(flags, int) and bool(flags & FLAG_LOADING)


def error_text(action: str, status: int | None, code: int | None, text: str) -> str:
    """One line for a failed Discord call (never the token: Discord does not echo it)."""
    parts = [f"discord {action}"]
    if status is not None:
        parts.append(str(status))
    detail = text.strip().splitlines()[0][:300] if text and text.strip() else ""
    if code:
        detail = f"{detail} (code {code})".strip()
    return ": ".join([" ".join(parts), detail]) if detail else " ".join(parts)
