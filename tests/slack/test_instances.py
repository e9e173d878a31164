"""Slack instances through the hub's API: create (auth.test), live status, no QR, delete."""

from __future__ import annotations

from tests.fakes.hive import FakeHive
from tests.fakes.slack import FakeSlack
from tests.hub_process import HubProcess
from tests.slack import payloads
from tests.slack.conftest import create_slack_instance, post_signed, setup_slack


def test_create_checks_the_token_and_keeps_the_bot_identity(slack_hub: HubProcess, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    created = app.instance
    assert created["channel"] == "slack"
    assert created["state"] == "connected"
    config = created["config"]
    assert config["bot_token"] == "***" and config["signing_secret"] == "***"
    assert config["bot_user_id"] == payloads.BOT_USER
    assert config["bot_id"] == payloads.BOT_ID
    assert config["team_id"] == payloads.TEAM and config["team"] == "Acme"
    assert config["app_id"] == payloads.APP
    [check] = slack.calls("auth.test")
    assert check.headers["authorization"] == "Bearer xoxb-0001-acme-test-token"
    listed = slack_hub.admin.get("/instances").json()["instances"]
    assert "xoxb" not in str(listed) and "8f742231" not in str(listed)


def test_create_without_team_id_learns_it_from_auth_test(slack_hub: HubProcess, hive: FakeHive) -> None:
    app = setup_slack(slack_hub, app_id=None, team_id=None)
    assert app.instance["config"]["team_id"] == payloads.TEAM
    r = app.post(payloads.envelope(payloads.message_event("found without app_id")))
    assert r.status_code == 200 and r.json()["status"] == "accepted"


def test_create_refusals(slack_hub: HubProcess, slack: FakeSlack) -> None:
    slack_hub.create_tenant("acme")
    bad_token = create_slack_instance(slack_hub, "acme", "bad-token", token="xoxb-nope")
    assert bad_token.status_code == 502
    assert bad_token.json()["error"]["code"] == "channel_error"
    assert "invalid_auth" in bad_token.json()["error"]["message"]

    missing = slack_hub.admin.post(
        "/instances/create",
        json={
            "instanceName": "no-secret",
            "tenant": "acme",
            "channel": "slack",
            "bot_token": "xoxb-0001-acme-test-token",
        },
    )
    assert missing.status_code == 400
    assert "signing_secret" in missing.json()["error"]["message"]

    other_team = create_slack_instance(slack_hub, "acme", "wrong-team", team_id="T0SOMEONE")
    assert other_team.status_code == 400
    assert "T0SOMEONE" in other_team.json()["error"]["message"]
    assert slack_hub.admin.get("/instances").json()["instances"] == []


def test_status_reflects_auth_test(slack_hub: HubProcess, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    instance_id = app.instance["id"]
    live = slack_hub.admin.get(f"/instances/{instance_id}").json()
    assert live["live"] == {"status": "ok", "state": "connected", "reason": None}

    slack.revoke()
    revoked = slack_hub.admin.get(f"/instances/{instance_id}").json()
    assert revoked["live"]["state"] == "failed"
    assert "token_revoked" in revoked["live"]["reason"]
    assert revoked["state"] == "failed"

    slack.set_down(True, refuse=False)  # Slack answering 503: the stored state stays, the error shows
    try:
        down = slack_hub.admin.get(f"/instances/{instance_id}").json()
    finally:
        slack.set_down(False)
    assert down["live"]["status"] == "error" and "503" in down["live"]["error"]
    assert down["state"] == "failed"


def test_no_qr_and_delete(slack_hub: HubProcess, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    instance_id = app.instance["id"]
    qr = slack_hub.admin.get(f"/instances/qr/{instance_id}")
    assert qr.status_code == 400 and qr.json()["error"]["code"] == "unsupported_channel"
    deleted = slack_hub.admin.delete(f"/instances/{instance_id}")
    assert deleted.status_code == 200
    assert slack.calls("chat.postMessage") == []
    gone = post_signed(slack_hub, payloads.envelope(payloads.message_event("still there?")))
    assert gone.status_code == 404
