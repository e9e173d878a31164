"""Pacing: per-chat rates queue instead of failing; a 429 pauses the instance without spending attempts."""

from __future__ import annotations

import itertools

from tests.conftest import HubFactory
from tests.e2e.helpers import message, wait_status
from tests.fakes.evolution import FakeEvolution
from tests.hub_process import HubProcess


def _instance(hub: HubProcess, pacing: dict[str, float]) -> dict[str, str]:
    tenant = hub.create_tenant("acme")
    r = hub.admin.post("/instances/create", json={"instanceName": "acme-sales", "tenant": "acme", "pacing": pacing})
    assert r.status_code == 201, r.text
    return dict(tenant)


def test_a_chat_is_paced_and_others_are_not(hub_factory: HubFactory, evolution: FakeEvolution) -> None:
    hub = hub_factory()
    tenant = _instance(hub, {"per_chat_per_second": 2, "per_chat_burst": 1})
    client = hub.client(tenant["api_key"])
    for n in range(4):
        r = client.post("/messages/send", json={"instance": "acme-sales", "to": "5511911110000", "text": f"a{n}"})
        assert r.status_code == 202
    other = client.post("/messages/send", json={"instance": "acme-sales", "to": "5511922220000", "text": "b0"})
    evolution.wait_for(5, timeout=15)
    sends = evolution.sends()
    paced = [s.time for s in sends if s.body["number"] == "5511911110000"]
    assert [s.body["text"] for s in sends if s.body["number"] == "5511911110000"] == ["a0", "a1", "a2", "a3"]
    gaps = [b - a for a, b in itertools.pairwise(paced)]
    assert all(gap >= 0.4 for gap in gaps), gaps  # 2 per second, no burst beyond 1
    b_time = next(s.time for s in sends if s.body["number"] == "5511922220000")
    assert b_time - paced[0] < 0.4  # the other chat did not wait behind the paced one
    assert message(hub, other.json()["id"])["status"] == "sent"


def test_429_pauses_the_instance_and_costs_no_attempt(hub_factory: HubFactory, evolution: FakeEvolution) -> None:
    hub = hub_factory(OMNI_RETRY_MAX_ATTEMPTS="2")
    tenant = _instance(hub, {})
    evolution.fail_next(3, 429, retry_after=0.5, path="/message/")
    r = hub.client(tenant["api_key"]).post(
        "/messages/send", json={"instance": "acme-sales", "to": "5511933330000", "text": "devagar"}
    )
    sent = wait_status(hub, r.json()["id"], "sent", timeout=15)
    # Three 429s with only two attempts allowed: rate limits are waited out, not counted.
    outcomes = [a["outcome"] for a in sent["attempts"]]
    assert outcomes == ["rate_limited", "rate_limited", "rate_limited", "ok"], outcomes
    attempts = evolution.requests_to("/message/sendText")
    assert [a.status for a in attempts] == [429, 429, 429, 201]
    assert all(b.time - a.time >= 0.4 for a, b in itertools.pairwise(attempts))
