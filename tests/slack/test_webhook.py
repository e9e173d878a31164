"""The Slack Events API endpoint over real HTTP: signatures, url_verification, finding tenant and instance."""

from __future__ import annotations

import time

import httpx

from tests.conftest import HubFactory
from tests.e2e.helpers import history, message
from tests.fakes.hive import FakeHive
from tests.fakes.slack import FakeSlack, Workspace
from tests.hub_process import HubProcess
from tests.slack import payloads
from tests.slack.conftest import SIGNING_SECRET, create_slack_instance, post_signed, setup_slack


def test_signed_event_is_accepted(slack_hub: HubProcess, hive: FakeHive) -> None:
    app = setup_slack(slack_hub)
    r = app.post(payloads.envelope(payloads.message_event("Is order 4521 shipped?")))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "accepted"
    stored = message(slack_hub, r.json()["id"])
    assert stored["source"] == "slack"
    assert stored["instance"] == "acme-slack"
    assert stored["content"]["text"] == "Is order 4521 shipped?"


def test_wrong_signature_is_refused(slack_hub: HubProcess, hive: FakeHive) -> None:
    app = setup_slack(slack_hub)
    r = app.post(payloads.envelope(payloads.message_event("forged")), secret="not-the-signing-secret")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_signature"
    # A body changed after signing fails too.
    body = payloads.envelope(payloads.message_event("original"))
    signed_at = int(time.time())
    good = app.post(body, timestamp=signed_at).request.headers["x-slack-signature"]
    tampered = app.post({**body, "event_id": "EvTAMPERED"}, timestamp=signed_at, signature=good)
    assert tampered.status_code == 401
    assert [m["content"]["text"] for m in history(slack_hub, "acme", direction="inbound")] == ["original"]


def test_stale_or_missing_timestamp_is_refused(slack_hub: HubProcess, hive: FakeHive) -> None:
    app = setup_slack(slack_hub)
    payload = payloads.envelope(payloads.message_event("replayed"))
    stale = app.post(payload, timestamp=int(time.time()) - 301)  # validly signed, but too old
    assert stale.status_code == 401
    assert stale.json()["error"]["code"] == "stale_timestamp"
    future = app.post(payload, timestamp=int(time.time()) + 400)
    assert future.status_code == 401
    unsigned = httpx.post(slack_hub.url + "/webhooks/slack", json=payload, timeout=10)
    assert unsigned.status_code == 401
    assert unsigned.json()["error"]["code"] == "missing_signature"
    assert history(slack_hub, "acme") == []


def test_url_verification_answers_the_challenge_only_when_signed(slack_hub: HubProcess) -> None:
    setup_slack(slack_hub)
    ok = post_signed(slack_hub, payloads.url_verification("chal-123"))
    assert ok.status_code == 200
    assert ok.json() == {"challenge": "chal-123"}
    forged = post_signed(slack_hub, payloads.url_verification("chal-123"), secret="wrong")
    assert forged.status_code == 401
    # The tenant's own Request URL works the same way.
    scoped = post_signed(slack_hub, payloads.url_verification("chal-456"), path="/webhooks/slack/acme")
    assert scoped.status_code == 200 and scoped.json() == {"challenge": "chal-456"}


def test_unknown_app_or_tenant(slack_hub: HubProcess) -> None:
    setup_slack(slack_hub)
    other_app = post_signed(slack_hub, payloads.envelope(payloads.message_event("hi"), app="A0OTHERAPP"))
    assert other_app.status_code == 404
    assert other_app.json()["error"]["code"] == "unknown_instance"
    assert "A0OTHERAPP" in other_app.json()["error"]["message"]
    no_tenant = post_signed(slack_hub, payloads.url_verification(), path="/webhooks/slack/nobody")
    assert no_tenant.status_code == 404
    assert no_tenant.json()["error"]["code"] == "unknown_tenant"


def test_many_tenants_and_apps_share_one_endpoint(
    slack_hub_factory: HubFactory, slack: FakeSlack, hive: FakeHive
) -> None:
    hub = slack_hub_factory()
    acme = setup_slack(hub, "acme", "acme-slack")
    slack.add_workspace(
        Workspace("xoxb-globex", team_id="T0GLOBEX1", team="Globex", bot_user_id="U0GLOBBOT", bot_id="B0GLOB")
    )
    globex = setup_slack(
        hub,
        "globex",
        "globex-slack",
        secret="globex-signing-secret",
        token="xoxb-globex",
        app_id="A0GLOBEX1",
        team_id="T0GLOBEX1",
    )
    for_acme = acme.post(payloads.envelope(payloads.message_event("for acme")))
    for_globex = globex.post(
        payloads.envelope(payloads.message_event("for globex", team="T0GLOBEX1"), team="T0GLOBEX1", app="A0GLOBEX1")
    )
    assert for_acme.status_code == 200 and for_globex.status_code == 200
    assert message(hub, for_acme.json()["id"])["tenant"] == "acme"
    assert message(hub, for_globex.json()["id"])["tenant"] == "globex"
    assert message(hub, for_globex.json()["id"])["instance"] == "globex-slack"
    # One tenant cannot inject into another through its own Request URL.
    crossed = post_signed(
        hub,
        payloads.envelope(payloads.message_event("sneaky", team="T0GLOBEX1"), team="T0GLOBEX1", app="A0GLOBEX1"),
        secret="globex-signing-secret",
        path="/webhooks/slack/acme",
    )
    assert crossed.status_code == 404
    # Acme's secret does not sign for Globex's app.
    forged = post_signed(
        hub,
        payloads.envelope(payloads.message_event("forged", team="T0GLOBEX1"), team="T0GLOBEX1", app="A0GLOBEX1"),
        secret=SIGNING_SECRET,
    )
    assert forged.status_code == 401
    assert [m["content"]["text"] for m in history(hub, "globex", direction="inbound")] == ["for globex"]


def test_same_app_for_two_tenants_needs_the_tenant_url(slack_hub_factory: HubFactory, hive: FakeHive) -> None:
    hub = slack_hub_factory()
    setup_slack(hub, "acme", "acme-slack")
    hub.create_tenant("umbrella")
    assert create_slack_instance(hub, "umbrella", "umbrella-slack").status_code == 201
    payload = payloads.envelope(payloads.message_event("whose?"))
    shared = post_signed(hub, payload)
    assert shared.status_code == 409
    assert shared.json()["error"]["code"] == "ambiguous_instance"
    scoped = post_signed(hub, payload, path="/webhooks/slack/umbrella")
    assert scoped.status_code == 200
    assert message(hub, scoped.json()["id"])["tenant"] == "umbrella"


def test_malformed_bodies(slack_hub: HubProcess) -> None:
    setup_slack(slack_hub)
    null = post_signed(slack_hub, None)
    assert null.status_code == 400
    array = post_signed(slack_hub, [1, 2])
    assert array.status_code == 400
    no_event = post_signed(slack_hub, {**payloads.envelope({}), "event": "nope"})
    assert no_event.status_code == 400
    assert no_event.json()["error"]["code"] == "invalid_payload"
    other_type = post_signed(slack_hub, {**payloads.envelope({}), "type": "app_rate_limited"})
    assert other_type.status_code == 200 and other_type.json()["status"] == "ignored"
