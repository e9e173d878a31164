"""Configuration parsing, retry schedule, secret redaction, webhook token checks."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omni_core.config import ConfigError, load_settings
from omni_core.entities import Tenant, has_secret, merge_config, redact, strip_secrets
from omni_core.errors import ApiError, PermanentError, TransientError, classify_status, parse_retry_after
from omni_core.hub import Hub, session_id_for
from omni_core.model import Chat, Content, Message, Sender, iso, iso_ms, now_iso, shareable
from omni_core.retry import RetryPolicy


def test_defaults_match_the_seed() -> None:
    s = load_settings({}, dotenv=None)
    assert (s.api_host, s.api_port) == ("0.0.0.0", 8882)
    assert s.sqlite_path == "./data/automagik-omni.db"
    assert s.hive_enabled is False and s.workers == 100 and s.retry_max_attempts == 8
    assert s.max_body_bytes == 1024 * 1024


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"AUTOMAGIK_OMNI_API_PORT": "eighty"}, "AUTOMAGIK_OMNI_API_PORT"),
        ({"AUTOMAGIK_OMNI_API_PORT": "70000"}, "AUTOMAGIK_OMNI_API_PORT"),
        ({"OMNI_TO_HIVE_ENABLED": "maybe"}, "OMNI_TO_HIVE_ENABLED"),
        ({"OMNI_TO_HIVE_ENABLED": "true"}, "HIVE_API_URL"),
        ({"HIVE_API_URL": "not a url"}, "HIVE_API_URL"),
        ({"EVOLUTION_API_BASE_URL": "ftp://x"}, "EVOLUTION_API_BASE_URL"),
        ({"AUTOMAGIK_OMNI_API_KEY": "short"}, "AUTOMAGIK_OMNI_API_KEY"),
    ],
)
def test_invalid_configuration_names_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env, dotenv=None)
    assert str(info.value).startswith(names)
    assert "\n" not in str(info.value)


def test_dotenv_never_overrides_real_environment(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text('AUTOMAGIK_OMNI_API_PORT=9000\nexport HIVE_API_URL="http://hive.local:8000/"\n# comment\n')
    s = load_settings({"AUTOMAGIK_OMNI_API_PORT": "9100"}, dotenv=dotenv)
    assert s.api_port == 9100
    assert s.hive_api_url == "http://hive.local:8000"


@given(attempt=st.integers(1, 40), retry_after=st.none() | st.floats(0, 1000), seed=st.integers())
def test_retry_delay_is_bounded_and_honours_retry_after(attempt: int, retry_after: float | None, seed: int) -> None:
    policy = RetryPolicy(max_attempts=8, base_seconds=1, max_seconds=300)
    delay = policy.delay(attempt, retry_after, random.Random(seed))
    assert 0 < delay <= 300
    step = min(300, 2 ** (attempt - 1))
    assert delay >= min(step / 2, 300)
    if retry_after is not None:
        assert delay >= min(retry_after, 300)


def test_status_classification() -> None:
    assert classify_status(200) is None
    assert classify_status(503) is TransientError and classify_status(429) is TransientError
    assert classify_status(408) is TransientError
    assert classify_status(400) is PermanentError and classify_status(401) is PermanentError
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_secrets_are_redacted_and_stripped() -> None:
    config = {"hive": {"api_key": "sk-1", "enabled": True, "api_url": "http://h"}, "greeting": "hi", "token": "t"}
    assert redact(config) == {
        "hive": {"api_key": "***", "enabled": True, "api_url": "http://h"},
        "greeting": "hi",
        "token": "***",
    }
    assert strip_secrets(config) == {"hive": {"enabled": True, "api_url": "http://h"}, "greeting": "hi"}
    assert merge_config(config, {"hive": {"api_key": None}, "greeting": "oi"})["hive"] == {
        "enabled": True,
        "api_url": "http://h",
    }


def test_webhook_token_check() -> None:
    tenant = Tenant(id="t", name="t", webhook_secret="whsec_abc")
    Hub.check_webhook_token(tenant, {"x-omni-webhook-token": "whsec_abc"}, {})
    Hub.check_webhook_token(tenant, {}, {"token": "whsec_abc"})
    for headers, query in (({}, {}), ({"x-omni-webhook-token": "nope"}, {}), ({}, {"token": "whsec_ab"})):
        with pytest.raises(ApiError) as info:
            Hub.check_webhook_token(tenant, headers, query)
        assert info.value.status == 401


def test_session_id_is_stable_per_chat() -> None:
    assert session_id_for("t", "i", "c") == session_id_for("t", "i", "c")
    assert session_id_for("t", "i", "c") != session_id_for("t", "i", "d")
    assert session_id_for("t", "i", "c") != session_id_for("u", "i", "c")


def test_ids_sort_in_creation_order_and_carry_the_time() -> None:
    import time

    from omni_core.ids import new_id

    before = time.time_ns() // 1_000_000
    ids = [new_id("msg") for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    body = ids[0].removeprefix("msg_")
    assert len(body) == 26 and set(body) <= set(alphabet)
    ms = 0
    for char in body[:10]:
        ms = ms * 32 + alphabet.index(char)
    assert before <= ms <= time.time_ns() // 1_000_000


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # 1970 .. 2100, in milliseconds
def test_the_millisecond_formatter_matches_iso(ms: int) -> None:
    instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms, microseconds=999)
    assert iso_ms(ms) == iso(instant)


def test_the_millisecond_formatter_across_a_second_and_back() -> None:
    """The per-second cache: the next second, an earlier one, then the first again."""
    start = 1_764_190_799_998  # 2025-11-26T20:59:59.998Z
    for ms in (start, start + 1, start + 2, start + 1_001, start - 86_400_000, start + 1):
        instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
        assert iso_ms(ms) == iso(instant)
    assert iso_ms(start + 2) == "2025-11-26T21:00:00.000Z"


def test_now_iso_is_the_current_millisecond_and_never_runs_backwards() -> None:
    before = iso(datetime.now(UTC))
    seen = [now_iso() for _ in range(2000)]
    after = iso(datetime.now(UTC))
    assert seen == sorted(seen)
    assert before <= seen[0] and seen[-1] <= after


_json_leaves = st.one_of(st.none(), st.just(""), st.booleans(), st.integers(), st.text(max_size=5))
_keys = st.sampled_from(["text", "api_key", "Token", "chat", "password", "SECRETS", "id", "credentials", "n"])
_trees = st.recursive(
    _json_leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=4)),
    max_leaves=20,
)


@given(_trees)
def test_has_secret_is_true_exactly_when_redact_changes_the_tree(tree: Any) -> None:
    assert has_secret(tree) == (redact(tree) != tree)


@given(st.dictionaries(_keys, _trees, max_size=4))
def test_shareable_redacts_only_when_there_is_a_secret(metadata: dict[str, Any]) -> None:
    message = Message(
        id="msg_1",
        source="whatsapp",
        tenant="t",
        instance="i",
        direction="inbound",
        chat=Chat(id="c"),
        sender=Sender(id="s"),
        content=Content(text="hi", metadata=metadata),
        timestamp="2026-01-01T00:00:00.000Z",
    )
    shared = shareable(message)
    assert shared.content.metadata == redact(metadata)
    assert (shared is message) == (not has_secret(metadata))


def test_otel_settings_from_dotenv_never_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from omni_core.otel import adopt_dotenv

    # A copy of the environment: nothing adopted here may leak into the hubs later tests start.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    monkeypatch.setattr(os, "environ", {**environ, "OTEL_SERVICE_NAME": "from-env"})
    adopted = adopt_dotenv(
        {
            "OTEL_SERVICE_NAME": "from-dotenv",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_TRACES_SAMPLER": "",
            "HIVE_API_KEY": "not-an-otel-setting",
        }
    )
    assert adopted == ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert os.environ["OTEL_SERVICE_NAME"] == "from-env"
    assert os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert "OTEL_TRACES_SAMPLER" not in os.environ and os.environ.get("HIVE_API_KEY") != "not-an-otel-setting"
