"""Pacing: token buckets per chat and per instance, pauses by scope, config overrides."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from omni_core.pacing import CHANNEL_DEFAULTS, PaceLimits, Pacer, limits_for

LIMITS = PaceLimits(per_chat_per_second=1.0, per_chat_burst=2, per_instance_per_second=3.0, per_instance_burst=3)


def test_a_chat_gets_its_burst_then_waits_its_turn() -> None:
    pacer = Pacer()
    assert pacer.reserve("i", "a", LIMITS, now=0.0, job_id="j1") == 0
    assert pacer.reserve("i", "a", LIMITS, now=0.0, job_id="j2") == 0
    wait = pacer.reserve("i", "a", LIMITS, now=0.0, job_id="j3")
    assert 0.99 <= wait <= 1.0
    assert pacer.reserve("i", "a", LIMITS, now=0.5, job_id="j3") == 0.5  # still waiting for its turn
    assert pacer.reserve("i", "a", LIMITS, now=1.0, job_id="j3") == 0  # its turn, no second token


def test_waiting_sends_are_spread_not_herded() -> None:
    pacer = Pacer()
    limits = PaceLimits(per_instance_per_second=10.0, per_instance_burst=1)
    waits = [pacer.reserve("i", f"c{n}", limits, now=0.0, job_id=f"j{n}") for n in range(21)]
    assert waits[0] == 0
    assert waits[1:] == sorted(waits[1:]) and abs(waits[-1] - 2.0) < 1e-9  # 20 more over 2 s


def test_the_instance_limit_spans_chats() -> None:
    pacer = Pacer()
    assert [pacer.reserve("i", c, LIMITS, now=0.0) for c in "abc"] == [0, 0, 0]
    assert pacer.reserve("i", "d", LIMITS, now=0.0) > 0
    assert pacer.reserve("other", "d", LIMITS, now=0.0) == 0  # another instance is unaffected


def test_pauses_hold_only_their_scope() -> None:
    pacer = Pacer()
    pacer.pause("i", "a", "chat", 5.0, now=0.0)
    assert pacer.reserve("i", "a", LIMITS, now=1.0) == 4.0
    assert pacer.reserve("i", "b", LIMITS, now=1.0) == 0
    pacer.pause("i", "a", "instance", 2.0, now=1.0)
    assert pacer.reserve("i", "b", LIMITS, now=2.0) == 1.0


@settings(max_examples=100, deadline=None)
@given(times=st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(times: list[float]) -> None:
    pacer = Pacer()
    sent = []
    for n, t in enumerate(sorted(times)):
        if pacer.reserve("i", "a", LIMITS, now=t, job_id=f"j{n}") == 0:
            sent.append(t)
        else:
            pacer.forget(f"j{n}")  # gave up: its reserved turn is not used by this test
    for i, start in enumerate(sent):
        window = [t for t in sent[i:] if t - start <= 10]
        assert len(window) <= LIMITS.per_chat_burst + 10 * LIMITS.per_chat_per_second + 1e-9


def test_instance_config_overrides_channel_defaults() -> None:
    assert limits_for("slack", {}) == CHANNEL_DEFAULTS["slack"]
    custom = limits_for("slack", {"pacing": {"per_chat_per_second": 5, "per_chat_burst": 10}})
    assert custom.per_chat_per_second == 5 and custom.per_chat_burst == 10
    assert custom.per_instance_per_second == CHANNEL_DEFAULTS["slack"].per_instance_per_second
    assert limits_for("webchat", {}) == PaceLimits()  # unknown channels are not paced
    assert limits_for("slack", {"pacing": {"per_chat_burst": "lots"}}) == CHANNEL_DEFAULTS["slack"]
