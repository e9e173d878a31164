"""Tenant credential rotation in the stores (SQLite and PostgreSQL) and the inbound token check."""

from __future__ import annotations

import time

import pytest

from omni_core.entities import Tenant
from omni_core.errors import ApiError
from omni_core.hub import Hub
from omni_core.store.base import Store

NOW = "2026-01-01T00:00:00.000Z"
LATER = "2026-01-02T00:00:00.000Z"


async def test_a_new_api_key_hash_replaces_the_old_one_even_when_cached(store: Store) -> None:
    assert (await store.tenant_by_key_hash("h1")) is not None  # now cached
    assert await store.set_tenant_api_key("t1", "h1-new", LATER)
    assert await store.tenant_by_key_hash("h1") is None
    tenant = await store.tenant_by_key_hash("h1-new")
    assert tenant is not None and tenant.id == "t1" and tenant.updated_at == LATER
    assert (await store.tenant_by_key_hash("h2")) is not None  # others untouched
    assert not await store.set_tenant_api_key("nope", "h3", LATER)


async def test_webhook_secret_rotation_keeps_the_replaced_secret_until_the_overlap_ends(store: Store) -> None:
    assert (await store.get_tenant("t1")) is not None  # now cached
    until = time.time() + 100
    rotated = await store.rotate_tenant_webhook_secret("t1", "s1b", until, LATER)
    assert rotated is not None
    assert (rotated.webhook_secret, rotated.webhook_secret_previous, rotated.previous_valid_until) == (
        "s1b",
        "s1",
        until,
    )
    assert rotated.updated_at == LATER
    assert await store.get_tenant("t1") == rotated
    assert [t for t in await store.list_tenants() if t.id == "t1"] == [rotated]
    # The previous secret is whatever the rotation replaced, so rotations chain.
    chained = await store.rotate_tenant_webhook_secret("t1", "s1c", until, LATER)
    assert chained is not None and chained.webhook_secret_previous == "s1b"
    # No overlap: no previous secret at all.
    cut = await store.rotate_tenant_webhook_secret("t1", "s1d", None, LATER)
    assert cut is not None and (cut.webhook_secret_previous, cut.previous_valid_until) == (None, None)
    assert (await store.get_tenant("t2")) == Tenant(
        id="t2", name="T2", webhook_secret="s2", created_at=NOW, updated_at=NOW
    )
    assert await store.rotate_tenant_webhook_secret("nope", "x", None, LATER) is None


def _check(tenant: Tenant, token: str | None) -> None:
    Hub.check_webhook_token(tenant, {"x-omni-webhook-token": token} if token else {}, {})


def test_the_token_check_accepts_the_previous_secret_only_during_the_overlap() -> None:
    now = time.time()
    tenant = Tenant(
        id="t", name="T", webhook_secret="new", webhook_secret_previous="old", previous_valid_until=now + 60
    )
    assert tenant.webhook_secrets_in_use(now) == ["new", "old"]
    _check(tenant, "new")
    _check(tenant, "old")
    Hub.check_webhook_token(tenant, {}, {"token": ["old"]})
    for token, code in [("other", "invalid_webhook_token"), (None, "missing_webhook_token")]:
        with pytest.raises(ApiError) as caught:
            _check(tenant, token)
        assert caught.value.status == 401 and caught.value.code == code

    tenant.previous_valid_until = now - 1
    assert tenant.webhook_secrets_in_use(now) == ["new"]
    _check(tenant, "new")
    with pytest.raises(ApiError, match="does not match"):
        _check(tenant, "old")
    # A tenant without a secret accepts nothing, even a token equal to an expired previous one.
    with pytest.raises(ApiError, match="required"):
        _check(Tenant(id="t", name="T"), "old")
