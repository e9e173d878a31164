"""Results of instance lifecycle calls on a channel's server."""

from __future__ import annotations

from typing import Any

import msgspec


class InstanceInfo(msgspec.Struct, kw_only=True):
    """What the channel's server says about an instance."""

    state: str
    reason: str | None = None
    #: Merged (JSON merge-patch) into the instance's config: values the hub must keep for later
    #: calls (e.g. ``{"evolution": {"instance_token": ...}}``) and facts to show. Keys whose name
    #: contains key/token/secret/password are secrets: stored, never returned by the API.
    config_patch: dict[str, Any] = msgspec.field(default_factory=dict)
    qr: QrCode | None = None


class QrCode(msgspec.Struct, kw_only=True):
    status: str
    qrcode_base64: str | None = None
    code: str | None = None
    pairing_code: str | None = None
