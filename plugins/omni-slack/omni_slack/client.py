"""Slack Web API calls through slack_sdk's ``AsyncWebClient`` (the client slack-bolt is built on).

One client per instance, reused (keyed by instance id and bot token), all sharing one aiohttp session.
slack_sdk's own retry handlers are off: a failed call becomes a :class:`TransientError` /
:class:`PermanentError` and the hub's durable queue decides when to try again (honouring ``Retry-After``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import httpx
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from omni_core import (
    ApiError,
    DeliveryReceipt,
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
)
from omni_slack import wire

API_URL_ENV = "SLACK_API_URL"
#: Media the hub downloads to re-upload to Slack is held in memory: refuse anything bigger.
MAX_MEDIA_BYTES = 50 * 1024 * 1024
_SESSION_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
_PROGRESS_LIMIT = 4096


class SlackClients:
    """``AsyncWebClient`` per instance, rebuilt when the instance's token changes; one aiohttp session."""

    def __init__(self) -> None:
        self._clients: dict[str, tuple[str, AsyncWebClient]] = {}
        self._session: aiohttp.ClientSession | None = None

    def get(self, key: str, token: str) -> AsyncWebClient:
        """The client for instance ``key`` with ``token``. Call from a coroutine (the session needs a loop)."""
        cached = self._clients.get(key)
        if cached is not None and cached[0] == token:
            return cached[1]
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=_SESSION_TIMEOUT)
        client = AsyncWebClient(
            token=token,
            base_url=wire.api_url(os.environ.get(API_URL_ENV)),
            session=self._session,
            retry_handlers=[],
        )
        self._clients[key] = (token, client)
        return client

    def forget(self, key: str) -> None:
        self._clients.pop(key, None)

    async def close(self) -> None:
        self._clients.clear()
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


@dataclass
class Progress:
    """What an interrupted delivery already put on Slack: the next step runs from ``done``."""

    done: int = 0
    posts: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


class DeliveryProgress:
    """Steps already delivered per message, so the queue's retry continues after the last successful part
    instead of posting earlier parts again. In memory (bounded): a hub restart in between forgets it."""

    def __init__(self, limit: int = _PROGRESS_LIMIT) -> None:
        self._limit = limit
        self._items: OrderedDict[str, Progress] = OrderedDict()

    def get(self, message_id: str) -> Progress:
        return self._items.get(message_id) or Progress()

    def save(self, message_id: str, progress: Progress) -> None:
        self._items[message_id] = progress
        self._items.move_to_end(message_id)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def forget(self, message_id: str) -> None:
        self._items.pop(message_id, None)

    def __len__(self) -> int:
        return len(self._items)


CLIENTS = SlackClients()
PROGRESS = DeliveryProgress()


def _headers_get(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    for key in (name, name.lower()):
        try:
            value = headers.get(key)
        except AttributeError:
            return None
        if isinstance(value, str):
            return value
    return None


async def call(method: str, pending: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
    """Await one Web API call, turning every failure into the queue's error types."""
    try:
        return await pending
    except SlackApiError as exc:
        response = exc.response
        status = getattr(response, "status_code", None)
        if not isinstance(status, int):
            status = getattr(response, "status", None)  # a raw aiohttp response (unreadable body)
        data = getattr(response, "data", None)
        error = data.get("error") if isinstance(data, dict) else None
        retry_after = _headers_get(getattr(response, "headers", None), "Retry-After")
        raise wire.api_error(
            method, status if isinstance(status, int) else None, error if isinstance(error, str) else None, retry_after
        ) from None
    except SlackRequestError as exc:  # the file upload step answered non-200
        raise TransientError(f"slack {method}: {exc}") from None
    except TimeoutError:
        raise TransientError(f"slack {method}: timed out") from None
    except aiohttp.ClientError as exc:
        raise TransientError(f"slack {method}: connection error: {type(exc).__name__}") from None


def _bot_token(instance: Instance) -> str:
    token = instance.config.get("bot_token")
    if not isinstance(token, str) or not token.strip():
        raise PermanentError(f"slack instance {instance.name!r} has no bot_token in its config")
    return token.strip()


# --- delivery ---------------------------------------------------------------------------------------
async def deliver(hub: Hub, instance: Instance, message: Message) -> DeliveryReceipt:
    """Post ``message``: text parts with ``chat.postMessage`` in order, then media with ``files_upload_v2``.

    Replies go to ``chat.thread_id`` when set. The receipt's external id is the first post's
    ``channel:ts``. A failure after some steps keeps their progress so the retry resumes after them.
    """
    try:
        steps = wire.plan_delivery(message)
    except ValueError as exc:
        raise PermanentError(f"cannot send on Slack: {exc}") from None
    client = CLIENTS.get(instance.id, _bot_token(instance))
    progress = PROGRESS.get(message.id)
    channel = message.chat.id
    thread_ts = message.chat.thread_id
    # Fetch media first: a dead media link should fail the message before any part is posted.
    downloads = {
        index: await download(hub, step.media)
        for index, step in enumerate(steps)
        if index >= progress.done and step.media is not None
    }
    for index in range(progress.done, len(steps)):
        step = steps[index]
        if step.media is None:
            answer = await call(
                "chat.postMessage", client.chat_postMessage(channel=channel, text=step.text or "", thread_ts=thread_ts)
            )
            posted = wire.posted_id(_data(answer), channel)
            if posted is not None:
                progress.posts.append(posted)
        else:
            content, filename = downloads[index]
            answer = await call(
                "files_upload_v2",
                client.files_upload_v2(
                    content=content,
                    filename=filename,
                    title=step.media.filename or filename,
                    channel=channel,
                    thread_ts=thread_ts,
                    initial_comment=step.media.caption,
                ),
            )
            progress.files.extend(wire.uploaded_file_ids(_data(answer)))
        progress.done = index + 1
        PROGRESS.save(message.id, progress)
    PROGRESS.forget(message.id)
    raw: dict[str, Any] = {"steps": len(steps), "posts": progress.posts}
    if progress.files:
        raw["files"] = progress.files
    return DeliveryReceipt(external_id=progress.posts[0] if progress.posts else None, status="sent", raw=raw)


def _data(answer: AsyncSlackResponse) -> Mapping[str, Any]:
    data = answer.data
    return data if isinstance(data, dict) else {}


def _where(url: str) -> str:
    """Host and file name of ``url`` for error texts (never its query, which may hold a signature)."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}/{filename_for(url, None)}"


def filename_for(url: str, given: str | None) -> str:
    if given:
        return given
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name or "file"


async def download(hub: Hub, media: Media) -> tuple[bytes, str]:
    """The bytes behind ``media.url`` (through the hub's shared HTTP client) and a file name for Slack."""
    url = media.url
    if not url or not url.startswith(("http://", "https://")):
        raise PermanentError("cannot send on Slack: media needs an http(s) url to upload")
    where = _where(url)
    try:
        async with hub.http.stream("GET", url) as response:
            error_class = classify_status(response.status_code)
            if error_class is None and response.status_code >= 300:
                error_class = PermanentError
            if error_class is not None:
                raise error_class(
                    f"slack media download {where}: HTTP {response.status_code}",
                    status_code=response.status_code,
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_MEDIA_BYTES:
                    raise PermanentError(f"slack media download {where}: larger than {MAX_MEDIA_BYTES} bytes")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise TransientError(f"slack media download {where}: timed out") from None
    except httpx.TransportError as exc:
        raise TransientError(f"slack media download {where}: {type(exc).__name__}") from None
    return b"".join(chunks), filename_for(url, media.filename)


# --- instance lifecycle ----------------------------------------------------------------------------
async def create_instance(hub: Hub, tenant: Tenant, instance: Instance, options: Mapping[str, Any]) -> InstanceInfo:
    """Check the credentials with ``auth.test`` and keep what it says about the bot and workspace.

    Missing or contradictory options are the caller's mistake (400); Slack refusing the token is a
    :class:`PermanentError` naming Slack's error (the API answers 502 with it).
    """
    try:
        opts = wire.create_options(options)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    client = CLIENTS.get(instance.id, opts.bot_token)
    try:
        answer = _data(await call("auth.test", client.auth_test()))
        wire.check_team(opts.team_id, answer)
    except ValueError as exc:
        CLIENTS.forget(instance.id)
        raise ApiError(400, "invalid_request", str(exc)) from None
    except BaseException:
        CLIENTS.forget(instance.id)
        raise
    return InstanceInfo(state="connected", config_patch=wire.auth_patch(answer))


async def instance_status(hub: Hub, instance: Instance) -> InstanceInfo:
    """``auth.test`` with the stored token: connected, or failed with Slack's reason."""
    try:
        client = CLIENTS.get(instance.id, _bot_token(instance))
        await call("auth.test", client.auth_test())
    except PermanentError as exc:
        return InstanceInfo(state="failed", reason=exc.message)
    return InstanceInfo(state="connected")


async def delete_instance(hub: Hub, instance: Instance) -> None:
    """Nothing to remove on Slack (the app stays installed); drop the cached client."""
    CLIENTS.forget(instance.id)


async def close() -> None:
    await CLIENTS.close()
