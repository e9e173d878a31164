"""Discord REST calls through discord.py's ``HTTPClient`` (its per-route rate-limit buckets, 429 handling).

Deliveries post in the channel (or thread) with ``message_reference`` to the message being answered, or,
for a slash command, edit the deferred interaction response and add follow-ups. Failures are mapped to
:class:`TransientError` (429 beyond the wait discord.py sleeps through, 5xx, network) or
:class:`PermanentError` (401/403/404 and other 4xx) for the queue.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
import discord
import httpx
from discord.http import HTTPClient, Route, handle_message_parameters

from omni_core import (
    ApiError,
    DeliveryReceipt,
    ExternalError,
    Hub,
    Instance,
    InstanceInfo,
    Media,
    Message,
    PermanentError,
    Tenant,
    TransientError,
    classify_status,
    parse_retry_after,
    utcnow,
)
from omni_discord.gateway import InstanceRuntime, apply_api_base_url, registry
from omni_discord.normalize import CHANNEL, USER_PREFIX, snowflake
from omni_discord.wire import (
    InteractionTarget,
    Post,
    check_application,
    compose_text,
    error_text,
    interaction_target,
    is_deferred_original,
    parse_config,
    plan_posts,
)

T = TypeVar("T")

#: Media up to this size is downloaded and uploaded as a Discord attachment (Discord's default limit for
#: bots); larger media is sent as a link in the text instead.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Agents may mention users (and the person they answer) but never @everyone/@here or roles.
ALLOWED_MENTIONS = discord.AllowedMentions(everyone=False, users=True, roles=False, replied_user=True)


# --- error mapping -----------------------------------------------------------------------------------


def external_error(action: str, exc: BaseException) -> ExternalError:
    """The queue's view of a failed discord.py call."""
    if isinstance(exc, ExternalError):
        return exc
    if isinstance(exc, discord.RateLimited):
        return TransientError(
            f"discord {action}: rate limited for {exc.retry_after:.1f}s", status_code=429, retry_after=exc.retry_after
        )
    if isinstance(exc, discord.LoginFailure):
        return PermanentError(f"discord {action}: the bot token was rejected (401)", status_code=401)
    if isinstance(exc, discord.HTTPException):
        status = exc.status
        text = exc.text if isinstance(exc.text, str) else ""
        message = error_text(action, status, exc.code or None, text)
        headers = getattr(exc.response, "headers", None) or {}
        retry_after = parse_retry_after(headers.get("Retry-After") if hasattr(headers, "get") else None)
        error_class = classify_status(status) or PermanentError
        return error_class(message, status_code=status, retry_after=retry_after)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ClientError | OSError):
        return TransientError(f"discord {action}: {type(exc).__name__}: {exc}"[:300])
    return TransientError(f"discord {action}: unexpected {type(exc).__name__}: {exc}"[:300])


async def call(action: str, pending: Awaitable[T]) -> T:
    try:
        return await pending
    except (TimeoutError, discord.DiscordException, aiohttp.ClientError, OSError) as exc:
        raise external_error(action, exc) from None


# --- media -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def _filename(media: Media, index: int) -> str:
    if media.filename:
        return media.filename
    path = unquote(urlsplit(media.url or "").path)
    name = path.rsplit("/", 1)[-1]
    if name:
        return name
    subtype = media.mime_type.split("/", 1)[-1].split(";", 1)[0].strip() or "bin"
    return f"file{index + 1}.{subtype}"


async def fetch_media(hub: Hub, media: Sequence[Media]) -> tuple[list[Upload], list[str]]:
    """Download each media URL with the hub's HTTP client: (uploads, links for files too large to upload)."""
    uploads: list[Upload] = []
    links: list[str] = []
    for index, item in enumerate(media):
        if not item.url:
            continue
        if item.size is not None and item.size > MAX_UPLOAD_BYTES:
            links.append(item.url)
            continue
        try:
            async with hub.http.stream("GET", item.url, follow_redirects=True) as response:
                status = response.status_code
                if status >= 300:
                    error_class = classify_status(status) or PermanentError
                    raise error_class(
                        f"downloading media {index + 1} for discord failed: HTTP {status}",
                        status_code=status,
                        retry_after=parse_retry_after(response.headers.get("retry-after")),
                    )
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
                    links.append(item.url)
                    continue
                chunks: list[bytes] = []
                size = 0
                too_big = False
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        too_big = True
                        break
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise TransientError(f"downloading media {index + 1} for discord timed out") from None
        except httpx.TransportError as exc:
            raise TransientError(f"downloading media {index + 1} for discord failed: {type(exc).__name__}") from None
        if too_big:
            links.append(item.url)
        else:
            uploads.append(Upload(filename=_filename(item, index), data=b"".join(chunks)))
    return uploads, links


def _files(uploads: Sequence[Upload], indices: Sequence[int]) -> list[discord.File]:
    return [discord.File(io.BytesIO(uploads[i].data), filename=uploads[i].filename) for i in indices]


# --- delivery ----------------------------------------------------------------------------------------


def _reference(message_id: str | None) -> Any:
    if message_id is None:
        return discord.utils.MISSING
    return {"message_id": message_id, "fail_if_not_exists": False}


async def _send(http: HTTPClient, route: Route, post: Post, uploads: Sequence[Upload], **extra: Any) -> Any:
    params = handle_message_parameters(
        content=post.content if post.content is not None else discord.utils.MISSING,
        nonce=post.nonce,
        files=_files(uploads, post.files) if post.files else discord.utils.MISSING,
        allowed_mentions=ALLOWED_MENTIONS,
        message_reference=_reference(post.reference),
    )
    try:
        if params.files:
            return await http.request(route, files=params.files, form=params.multipart, **extra)
        return await http.request(route, json=params.payload, **extra)
    finally:
        for file in params.files or ():
            file.close()


def _message_id(answer: Any) -> str | None:
    return snowflake(answer.get("id")) if isinstance(answer, dict) else None


async def _channel_id(http: HTTPClient, chat_id: str) -> str:
    """The channel to post in: a channel or thread id as is; ``user:<id>`` opens (or finds) the DM channel."""
    if chat_id.startswith(USER_PREFIX):
        user_id = chat_id[len(USER_PREFIX) :]
        channel = await call("open DM", http.start_private_message(int(user_id)))
        found = snowflake(channel.get("id"))
        if found is None:
            raise PermanentError(f"discord open DM: no channel id for user {user_id}")
        return found
    if snowflake(chat_id) is None:
        raise PermanentError(f"cannot send on Discord: {chat_id!r} is not a channel id")
    return chat_id


async def deliver_to_channel(
    http: HTTPClient, message: Message, text: str, uploads: Sequence[Upload], reply_to: str | None
) -> list[str]:
    channel_id = await _channel_id(http, message.chat.thread_id or message.chat.id)
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=channel_id)
    ids: list[str] = []
    for post in plan_posts(text, len(uploads), reply_to=reply_to, seed=message.id):
        answer = await call("create message", _send(http, route, post, uploads))
        if (found := _message_id(answer)) is not None:
            ids.append(found)
    return ids


async def _owns_original(
    http: HTTPClient, runtime: InstanceRuntime, target: InteractionTarget, message_id: str
) -> bool:
    """Whether this reply edits the deferred response: the first reply does, later ones follow up.

    Known in this process once a reply claimed it; otherwise Discord says whether the original response
    is still the deferred "thinking..." placeholder.
    """
    known = runtime.claim_original(target.token, message_id)
    if known is not None:
        return known
    route = Route(
        "GET",
        "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
        webhook_id=target.application_id,
        webhook_token=target.token,
    )
    original = await call("get original interaction response", http.request(route))
    return is_deferred_original(original)


async def deliver_to_interaction(
    http: HTTPClient,
    runtime: InstanceRuntime,
    target: InteractionTarget,
    message: Message,
    text: str,
    uploads: Sequence[Upload],
    ids: list[str],
) -> None:
    """Edit the deferred response (first reply) or follow up; ``ids`` collects the posted message ids."""
    posts = plan_posts(text, len(uploads), reply_to=None, seed=message.id, with_nonce=False)
    edit_original = await _owns_original(http, runtime, target, message.id)
    for index, post in enumerate(posts):
        if index == 0 and edit_original:
            runtime.record_original(target.token, message.id)
            route = Route(
                "PATCH",
                "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                webhook_id=target.application_id,
                webhook_token=target.token,
            )
            answer = await call("edit interaction response", _send(http, route, post, uploads))
        else:
            route = Route(
                "POST",
                "/webhooks/{webhook_id}/{webhook_token}",
                webhook_id=target.application_id,
                webhook_token=target.token,
            )
            answer = await call(
                "send interaction follow-up", _send(http, route, post, uploads, params={"wait": "true"})
            )
        if (found := _message_id(answer)) is not None:
            ids.append(found)


async def deliver(hub: Hub, instance: Instance, message: Message) -> DeliveryReceipt:
    """Send ``message`` on Discord; the receipt's id is the first Discord message posted."""
    runtime = registry.ensure(hub, instance)
    try:
        http = await runtime.rest()
    except RuntimeError as exc:
        raise PermanentError(f"discord instance {instance.name!r} cannot send: {exc}") from None
    except TimeoutError:
        raise TransientError(f"discord instance {instance.name!r} is not logged in yet ({runtime.reason})") from None

    meta = message.content.metadata
    origin: Message | None = None
    in_reply_to = meta.get("in_reply_to")
    if isinstance(in_reply_to, str) and in_reply_to:
        origin = await hub.get_message(in_reply_to)
    target = interaction_target(origin.content.metadata, utcnow()) if origin is not None else None

    uploads, links = await fetch_media(hub, message.content.media)
    captions = [m.caption for m in message.content.media if m.caption]
    text = compose_text(message.content.text, captions, links)
    if not text and not uploads:
        raise PermanentError("cannot send on Discord: the message has neither text nor media")

    ids: list[str] = []
    via = "interaction"
    if target is not None:
        try:
            await deliver_to_interaction(http, runtime, target, message, text, uploads, ids)
        except PermanentError as exc:
            # The interaction webhook is gone (token expired early, app removed): answer in the channel,
            # unless part of this reply already went out through it.
            if ids or exc.status_code not in (401, 404):
                raise
            target = None
    if target is None:
        # Only the first part of a reply the hub split quotes the message it answers.
        part = meta.get("part")
        first_part = not isinstance(part, int) or part <= 1
        reply_to = message.reply_to or (_str(meta.get("in_reply_to_external_id")) if first_part else None)
        if origin is not None and origin.content.metadata.get("interaction_id"):
            reply_to = None  # an interaction is not a message that can be quoted
        ids = await deliver_to_channel(http, message, text, uploads, reply_to if snowflake(reply_to) else None)
        via = "channel"
    return DeliveryReceipt(external_id=ids[0] if ids else None, status="sent", raw={"message_ids": ids, "via": via})


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- instances ---------------------------------------------------------------------------------------


async def create_instance(hub: Hub, tenant: Tenant, instance: Instance, options: Mapping[str, Any]) -> InstanceInfo:
    """Check the credentials with Discord (``GET /users/@me``, ``GET /oauth2/applications/@me``) and start
    the instance's gateway client."""
    try:
        config = parse_config(options)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"discord: {exc}") from None
    for other in await hub.instances_for_channel(CHANNEL):
        if other.id != instance.id and snowflake(other.config.get("application_id")) == config.application_id:
            raise ApiError(
                409,
                "application_in_use",
                f"discord application {config.application_id} is already connected as instance {other.name!r}",
            )
    apply_api_base_url()
    http = HTTPClient(asyncio.get_running_loop())
    try:
        user = await call("check bot token", http.static_login(config.bot_token))
        app = await call("read application", http.application_info())
    finally:
        await http.close()
    if not isinstance(user, dict) or not isinstance(app, dict):
        raise PermanentError("discord: unexpected answer to GET /users/@me or /oauth2/applications/@me")
    try:
        check_application(app, config)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"discord: {exc}") from None

    patch: dict[str, Any] = {
        **config.patch(),
        "bot_user_id": str(user["id"]),
        "bot_username": user.get("username"),
    }
    started = Instance(
        id=instance.id,
        tenant=instance.tenant,
        name=instance.name,
        channel=instance.channel,
        config={**instance.config, **patch},
    )
    runtime = await registry.replace(hub, started)
    return InstanceInfo(state=runtime.state, reason=runtime.reason, config_patch=patch)


async def instance_status(hub: Hub, instance: Instance) -> InstanceInfo:
    runtime = registry.get(instance.id)
    if runtime is None:
        return InstanceInfo(state="stopped", reason="no gateway client for this instance in this hub process")
    return InstanceInfo(state=runtime.state, reason=runtime.reason)


async def delete_instance(hub: Hub, instance: Instance) -> None:
    await registry.remove(instance.id)
