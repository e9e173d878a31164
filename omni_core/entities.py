"""Tenants and instances as plugins and API handlers see them."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

#: Config keys whose values are secrets: accepted on write, never returned or logged.
SECRET_KEY_PARTS = ("key", "token", "secret", "password", "credential")


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    # Cached: the same few metadata and config keys are checked for every message a history
    # page or an agent context shows.
    lowered = name.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def has_secret(value: Any) -> bool:
    """Whether :func:`redact` would change ``value`` (a secret-named key with a value set)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if is_secret_key(str(k)) and not isinstance(v, dict | list):
                if v not in (None, ""):
                    return True
            elif has_secret(v):
                return True
        return False
    if isinstance(value, list):
        return any(has_secret(v) for v in value)
    return False


def redact(value: Any) -> Any:
    """Copy of a config tree with every secret-named value removed (replaced by ``"***"`` markers).

    The marker tells an operator that a secret *is set* without revealing it.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if is_secret_key(str(k)) and not isinstance(v, dict | list):
                out[k] = "***" if v not in (None, "") else v
            else:
                out[k] = redact(v)
        return out
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def strip_secrets(value: Any) -> Any:
    """Copy of a config tree with secret-named values dropped entirely (for agent context)."""
    if isinstance(value, dict):
        return {
            k: strip_secrets(v)
            for k, v in value.items()
            if not (is_secret_key(str(k)) and not isinstance(v, dict | list))
        }
    if isinstance(value, list):
        return [strip_secrets(v) for v in value]
    return value


def merge_config(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge-patch (RFC 7386): nested dicts merge, ``null`` deletes a key."""
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = v
    return out


class Tenant(msgspec.Struct, kw_only=True):
    id: str
    name: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    webhook_secret: str = ""
    #: The secret replaced by the last rotation, accepted until ``previous_valid_until`` (epoch).
    webhook_secret_previous: str | None = None
    previous_valid_until: float | None = None
    created_at: str = ""
    updated_at: str = ""

    def webhook_secrets_in_use(self, now: float) -> list[str]:
        """The current inbound webhook secret, plus the previous one while its rotation overlap lasts."""
        current = [self.webhook_secret] if self.webhook_secret else []
        if self.webhook_secret_previous and self.previous_valid_until and now < self.previous_valid_until:
            return [*current, self.webhook_secret_previous]
        return current

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "config": redact(self.config),
            # When the previous inbound webhook secret stops working (never the secret itself).
            "webhook_secret_overlap_until": self.previous_valid_until if self.webhook_secret_previous else None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class Instance(msgspec.Struct, kw_only=True):
    """A connection of one tenant to one channel account (a WhatsApp number, a Slack app ...)."""

    id: str
    tenant: str
    name: str
    channel: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    state: str = "created"
    state_reason: str | None = None
    qrcode_base64: str | None = None
    qrcode_code: str | None = None
    pairing_code: str | None = None
    profile: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "channel": self.channel,
            "config": redact(self.config),
            "state": self.state,
            "state_reason": self.state_reason,
            "profile": self.profile,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class TenantWebhook(msgspec.Struct, kw_only=True):
    """A tenant's subscription: events the hub POSTs, signed (Standard Webhooks), to ``url``."""

    id: str
    tenant: str
    url: str
    events: list[str]
    secret: str
    enabled: bool = True
    description: str | None = None
    secret_previous: str | None = None
    previous_valid_until: float | None = None
    failing_since: float | None = None
    disabled_reason: str | None = None
    created_at: str = ""
    updated_at: str = ""

    def secrets_in_use(self, now: float) -> list[str]:
        """The current secret, plus the previous one while its rotation overlap lasts."""
        if self.secret_previous and self.previous_valid_until and now < self.previous_valid_until:
            return [self.secret, self.secret_previous]
        return [self.secret]

    def wants(self, event: str) -> bool:
        return self.enabled and (event in self.events or "*" in self.events)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "url": self.url,
            "events": self.events,
            "enabled": self.enabled,
            "description": self.description,
            "disabled_reason": self.disabled_reason,
            "failing_since": self.failing_since,
            "rotation_overlap_until": self.previous_valid_until if self.secret_previous else None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
