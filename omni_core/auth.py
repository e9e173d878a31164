"""API keys: the admin key and per-tenant keys (``x-api-key``).

Tenant keys are stored only as SHA-256 hashes; a stolen database does not reveal them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path

import msgspec

from omni_core.entities import Tenant
from omni_core.errors import ApiError
from omni_core.store.base import Store

ADMIN_KEY_FILE = "admin_api_key"


class Principal(msgspec.Struct, kw_only=True):
    """Who is calling: the admin, or one tenant."""

    admin: bool
    tenant: Tenant | None = None

    def tenant_scope(self) -> str | None:
        """The only tenant this caller may see, or None for the admin."""
        return None if self.admin else (self.tenant.id if self.tenant else None)

    def can_see(self, tenant_id: str) -> bool:
        return self.admin or (self.tenant is not None and self.tenant.id == tenant_id)

    def require_admin(self) -> None:
        if not self.admin:
            raise ApiError(403, "admin_only", "this endpoint needs the admin API key")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_tenant_key() -> str:
    return "omni_" + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def resolve_admin_key(configured: str | None, data_dir: Path) -> tuple[str, bool]:
    """The admin key: configured, or kept in the data directory, or generated there now.

    Returns (key, generated); the caller prints a generated key once.
    """
    if configured:
        return configured, False
    path = data_dir / ADMIN_KEY_FILE
    if path.is_file():
        stored = path.read_text(encoding="utf-8").strip()
        if stored:
            return stored, False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "omni_admin_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key, True


def announce_admin_key(key: str, path: Path) -> None:
    print(
        f"\nOmni Hub generated an admin API key (saved to {path}):\n\n    {key}\n\n"
        "Send it as header x-api-key. Set AUTOMAGIK_OMNI_API_KEY to choose your own.\n",
        file=sys.stderr,
        flush=True,
    )


class Authenticator:
    def __init__(self, admin_key: str, store: Store) -> None:
        self._admin = admin_key.encode()
        self.store = store

    async def principal(self, provided: str | None) -> Principal:
        if not provided:
            raise ApiError(401, "missing_api_key", "header x-api-key is required")
        if hmac.compare_digest(provided.encode(), self._admin):
            return Principal(admin=True)
        tenant = await self.store.tenant_by_key_hash(hash_key(provided))
        if tenant is None:
            raise ApiError(401, "invalid_api_key", "x-api-key is not a valid admin or tenant key")
        return Principal(admin=False, tenant=tenant)
