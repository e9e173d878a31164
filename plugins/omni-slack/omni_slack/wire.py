"""Slack Web API facts the plugin relies on, as pure functions: what to send, how to read answers and errors.

Kept apart from :mod:`client` so delivery plans, error mapping, instance options and instance matching are
unit-testable without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from omni_core import ExternalError, Instance, Media, Message, PermanentError, TransientError, parse_retry_after
from omni_core.text import split_for_sending, text_limit
from omni_slack.normalize import CHANNEL

DEFAULT_API_URL = "https://slack.com/api/"
#: Slack truncates ``text`` at 40,000 characters and advises far shorter posts; the hub splits at 4,000.
TEXT_LIMIT = text_limit(CHANNEL, 4000)

#: ``ok: false`` errors that retrying cannot fix, with what an operator should know about each.
PERMANENT_ERRORS: dict[str, str] = {
    "channel_not_found": "the channel does not exist or the app cannot see it",
    "not_in_channel": "the app is not a member of the channel; invite it first",
    "is_archived": "the channel is archived",
    "invalid_auth": "the bot token is not valid",
    "not_authed": "no bot token was sent",
    "account_inactive": "the bot token belongs to a deleted app or deactivated user",
    "token_revoked": "the bot token was revoked",
    "token_expired": "the bot token has expired",
    "no_text": "the message had no text",
    "msg_too_long": "the message text is too long",
    "missing_scope": "the bot token lacks a scope this call needs",
    "restricted_action": "the workspace does not let the app post here",
    "cannot_reply_to_message": "this message cannot be replied to in a thread",
    "invalid_thread_ts": "the thread to reply in does not exist",
}
#: ``ok: false`` errors Slack documents as temporary.
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
#: Instance config keys; the token and secret are redacted by the API (their names say so).
CONFIG_KEYS = ("bot_token", "signing_secret", "app_id", "team_id")


class Step(NamedTuple):
    """One Web API call of a delivery: a text post (``chat.postMessage``) or a file (``files_upload_v2``)."""

    text: str | None = None
    media: Media | None = None


class CreateOptions(NamedTuple):
    bot_token: str
    signing_secret: str
    app_id: str | None
    team_id: str | None


def _str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def api_url(configured: str | None) -> str:
    """The Web API base URL (``SLACK_API_URL`` or Slack's), always ending in ``/`` as slack_sdk joins on it."""
    url = _str(configured) or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"


# --- delivery ---------------------------------------------------------------------------------------
def plan_delivery(message: Message, limit: int = TEXT_LIMIT) -> list[Step]:
    """The calls that deliver ``message``, in order: its text split into posts of at most ``limit``
    characters (paragraph, then sentence boundaries), then one upload per media item."""
    steps = [Step(text=part) for part in split_for_sending(message.content.text or "", limit)]
    steps.extend(Step(media=item) for item in message.content.media)
    if not steps:
        raise ValueError("the message has neither text nor media")
    return steps


def posted_id(answer: Mapping[str, Any], channel: str) -> str | None:
    """The hub's external id (``channel:ts``) of a ``chat.postMessage`` answer; None if Slack gave no ts.

    The answer's channel wins: a post addressed to a user id lands in a ``D...`` DM channel.
    """
    ts = _str(answer.get("ts"))
    if ts is None:
        return None
    return f"{_str(answer.get('channel')) or channel}:{ts}"


def uploaded_file_ids(answer: Mapping[str, Any]) -> list[str]:
    """File ids from a ``files.completeUploadExternal`` answer."""
    files = answer.get("files")
    return [f["id"] for f in files if isinstance(f, dict) and _str(f.get("id"))] if isinstance(files, list) else []


def api_error(method: str, status: int | None, error: str | None, retry_after: str | None) -> ExternalError:
    """The queue's error for a failed Web API call: HTTP status and Slack's ``error`` code decide."""
    wait = parse_retry_after(retry_after)
    if status == 429 or error in ("ratelimited", "rate_limited"):
        return TransientError(f"slack {method}: ratelimited", status_code=429, retry_after=wait)
    if status is not None and status >= 500:
        detail = f": {error}" if error else ""
        return TransientError(f"slack {method}: HTTP {status}{detail}", status_code=status, retry_after=wait)
    if error in TRANSIENT_ERRORS:
        return TransientError(f"slack {method}: {error}", status_code=status, retry_after=wait)
    if error:
        hint = PERMANENT_ERRORS.get(error)
        # Any other ok:false is Slack refusing this request as made: sending it again cannot help.
        return PermanentError(f"slack {method}: {error}" + (f" ({hint})" if hint else ""), status_code=status)
    if status is not None and status in (408, 425):
        return TransientError(f"slack {method}: HTTP {status}", status_code=status, retry_after=wait)
    return PermanentError(f"slack {method}: HTTP {status} without a Slack answer", status_code=status)


# --- instances --------------------------------------------------------------------------------------
def create_options(options: Mapping[str, Any]) -> CreateOptions:
    """Check ``POST /instances/create`` options: ``bot_token`` and ``signing_secret`` are required."""
    token = _str(options.get("bot_token"))
    secret = _str(options.get("signing_secret"))
    missing = [name for name, value in (("bot_token", token), ("signing_secret", secret)) if value is None]
    if missing:
        raise ValueError(
            "a Slack instance needs " + " and ".join(missing) + " (from the app's OAuth & Permissions and Basic"
            " Information pages)"
        )
    for name in ("app_id", "team_id"):
        if options.get(name) is not None and _str(options.get(name)) is None:
            raise ValueError(f"{name} must be a non-empty string when given")
    assert token is not None and secret is not None
    return CreateOptions(token, secret, _str(options.get("app_id")), _str(options.get("team_id")))


def auth_patch(answer: Mapping[str, Any]) -> dict[str, Any]:
    """Instance config facts from ``auth.test``: the bot's user and bot ids (to recognise its own posts)
    and the workspace it is installed in (to route events)."""
    patch: dict[str, Any] = {}
    for source, target in (
        ("user_id", "bot_user_id"),
        ("bot_id", "bot_id"),
        ("team_id", "team_id"),
        ("team", "team"),
        ("url", "url"),
        ("enterprise_id", "enterprise_id"),
    ):
        value = _str(answer.get(source))
        if value is not None:
            patch[target] = value
    return patch


def check_team(expected: str | None, answer: Mapping[str, Any]) -> None:
    """A configured ``team_id`` must be the workspace the token belongs to (org-wide installs excepted)."""
    actual = _str(answer.get("team_id"))
    if expected is None or actual is None or expected == actual or answer.get("is_enterprise_install") is True:
        return
    raise ValueError(f"the bot token belongs to workspace {actual}, not to team_id {expected}")


# --- matching inbound requests to instances ------------------------------------------------------------
def payload_team_ids(payload: Mapping[str, Any]) -> set[str]:
    """Workspace ids an event may be addressed to: the envelope's and each authorization's (Slack Connect
    shared channels name the installing workspace in ``authorizations``)."""
    ids = {v for v in (_str(payload.get("team_id")), _str(payload.get("enterprise_id"))) if v}
    for auth in payload.get("authorizations") or []:
        if isinstance(auth, dict):
            ids.update(v for v in (_str(auth.get("team_id")), _str(auth.get("enterprise_id"))) if v)
    return ids


def candidates(instances: Iterable[Instance], payload: Mapping[str, Any]) -> list[tuple[int, Instance]]:
    """Instances that may own ``payload``, each with how many of its ids matched exactly, best first.

    An instance is out when its ``app_id`` / ``team_id`` contradicts the payload's; ids absent on either
    side do not exclude (``url_verification`` carries none: the signature decides alone).
    """
    app_id = _str(payload.get("api_app_id"))
    teams = payload_team_ids(payload)
    found: list[tuple[int, Instance]] = []
    for instance in instances:
        if _str(instance.config.get("signing_secret")) is None:
            continue
        own_app = _str(instance.config.get("app_id"))
        own_teams = {v for v in (_str(instance.config.get("team_id")), _str(instance.config.get("enterprise_id"))) if v}
        if app_id and own_app and own_app != app_id:
            continue
        if teams and own_teams and not own_teams & teams:
            continue
        score = int(bool(app_id and own_app == app_id)) + int(bool(own_teams & teams))
        found.append((score, instance))
    found.sort(key=lambda pair: -pair[0])
    return found


def best(verified: Sequence[tuple[int, Instance]]) -> list[Instance]:
    """The verified instances with the highest score (more than one means the match is ambiguous)."""
    if not verified:
        return []
    top = max(score for score, _ in verified)
    return [instance for score, instance in verified if score == top]
