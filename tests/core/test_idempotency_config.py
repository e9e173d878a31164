"""OMNI_IDEMPOTENCY_TTL_SECONDS: default, accepted range, and a one-line error naming it."""

from __future__ import annotations

import pytest

from omni_core.config import ConfigError, load_settings


def test_the_ttl_defaults_to_a_day_and_takes_whole_seconds() -> None:
    assert load_settings({}, dotenv=None).idempotency_ttl_seconds == 86400
    assert load_settings({"OMNI_IDEMPOTENCY_TTL_SECONDS": "1"}, dotenv=None).idempotency_ttl_seconds == 1
    year = str(365 * 86400)
    assert load_settings({"OMNI_IDEMPOTENCY_TTL_SECONDS": year}, dotenv=None).idempotency_ttl_seconds == 365 * 86400


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "a day", str(365 * 86400 + 1)])
def test_a_bad_ttl_stops_start_up_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"OMNI_IDEMPOTENCY_TTL_SECONDS": value}, dotenv=None)
    assert str(info.value).startswith("OMNI_IDEMPOTENCY_TTL_SECONDS: ")
    assert "\n" not in str(info.value)
