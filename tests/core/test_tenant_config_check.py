"""The core side of tenant-config validation (omni_core.api.tenants.check_config): every plugin's
omni_validate_tenant_config is asked, all problems are listed, secrets are masked, and a broken
validator is skipped. Real pluggy plugins, no HTTP; the API round trip is in
tests/e2e/test_tenant_config_validation.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from omni_hive import plugin as hive_plugin

from omni_core import hookimpl
from omni_core.api.tenants import check_config
from omni_core.errors import ApiError
from omni_core.plugins import make_plugin_manager


class Crm:
    """A careless plugin: it echoes the values it dislikes, secrets included."""

    @hookimpl
    def omni_validate_tenant_config(self, config: Mapping[str, Any]) -> list[str] | None:
        crm = config.get("crm") or {}
        return [f"crm.{k} is bad: {v}" for k, v in sorted(crm.items()) if str(v).startswith("bad")] or None


class Broken:
    @hookimpl
    def omni_validate_tenant_config(self, config: Mapping[str, Any]) -> list[str] | None:
        raise RuntimeError("validator bug")


class Meddler:
    @hookimpl
    def omni_validate_tenant_config(self, config: Mapping[str, Any]) -> list[str] | None:
        hive = config.get("hive")
        if isinstance(hive, dict):
            hive["api_url"] = "http://evil"
        return None


def check(config: dict[str, Any]) -> str | None:
    pm = make_plugin_manager(load_entry_points=False, extra=[hive_plugin, Crm(), Broken(), Meddler()])
    try:
        check_config(pm, config)
    except ApiError as exc:
        assert (exc.status, exc.code) == (400, "invalid_config")
        return exc.message
    return None


def test_all_problems_of_all_plugins_are_listed_and_secrets_masked() -> None:
    config = {
        "hive": {"api_url": "gopher://h", "api_key": "hk-123456"},
        "crm": {"api_token": "bad-secret-token-9", "region": "bad-region"},
    }
    message = check(config)
    assert message is not None
    assert message.startswith("invalid tenant config: ")
    assert "hive.api_url must be" in message and "crm.region is bad: bad-region" in message
    # The secret-named value the careless plugin echoed is masked; the plain one is not.
    assert "bad-secret-token-9" not in message and "crm.api_token is bad: ***" in message


def test_a_good_config_passes_and_validators_cannot_change_it() -> None:
    config: dict[str, Any] = {"hive": {"api_url": "http://hive:8000", "enabled": True}, "crm": {"region": "eu"}}
    assert check(config) is None
    assert config["hive"]["api_url"] == "http://hive:8000"


@pytest.mark.parametrize("config", [{}, {"crm": None}, {"unrelated": [1, {"token": None}]}])
def test_configs_without_plugin_sections_pass(config: dict[str, Any]) -> None:
    assert check(config) is None
