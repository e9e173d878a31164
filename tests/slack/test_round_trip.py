"""Slack in -> Hive -> reply out through the Slack Web API, over real HTTP (hub process, fake Slack, fake Hive)."""

from __future__ import annotations

from typing import Any

from tests.conftest import HubFactory
from tests.e2e.helpers import history, message, wait_status, wait_until
from tests.fakes.hive import FakeHive
from tests.fakes.slack import FakeSlack
from tests.hub_process import HubProcess
from tests.slack import payloads
from tests.slack.conftest import setup_slack


def outbound(hub: HubProcess, tenant: str, count: int = 1, *statuses: str) -> list[dict[str, Any]]:
    """The tenant's outbound messages, once there are ``count`` of them all in one of ``statuses``."""
    wanted = statuses or ("sent",)

    def check() -> list[dict[str, Any]] | None:
        found = [message(hub, m["id"]) for m in history(hub, tenant, direction="outbound")]
        return found if len(found) >= count and all(m["status"] in wanted for m in found) else None

    result: list[dict[str, Any]] = wait_until(check, what=f"{count} outbound message(s) in {wanted}")
    return result


def test_dm_is_forwarded_and_answered(slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    event = payloads.message_event("hello bot", channel=payloads.DM, channel_type="im")
    inbound_id = app.event(event).json()["id"]

    [post] = slack.wait_for(1)
    [request] = hive.processed()
    assert request["message"]["id"] == inbound_id
    assert request["message"]["chat"] == {"id": payloads.DM, "type": "direct", "thread_id": None, "name": None}
    assert request["message"]["sender"]["id"] == payloads.USER
    assert request["message"]["external_id"] == f"{payloads.DM}:{event['ts']}"
    assert post.headers["authorization"] == "Bearer xoxb-0001-acme-test-token"
    assert slack.posts()[0]["channel"] == payloads.DM
    assert slack.posts()[0]["text"] == "echo: hello bot"
    assert "thread_ts" not in slack.posts()[0]

    [reply] = outbound(slack_hub, "acme")
    assert reply["external_id"] == f"{payloads.DM}:{slack.posts()[0]['ts']}"
    assert reply["content"]["metadata"]["in_reply_to"] == inbound_id
    assert wait_status(slack_hub, inbound_id, "forwarded")["direction"] == "inbound"


def test_thread_reply_is_answered_in_the_thread(slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    parent = payloads.new_ts()
    inbound_id = app.event(payloads.message_event("Thanks, got it.", thread_ts=parent)).json()["id"]
    slack.wait_for(1)
    assert hive.processed()[0]["message"]["chat"]["thread_id"] == parent
    assert message(slack_hub, inbound_id)["reply_to"] == f"{payloads.CHANNEL}:{parent}"
    [post] = slack.posts()
    assert post["channel"] == payloads.CHANNEL
    assert post["thread_ts"] == parent
    [reply] = outbound(slack_hub, "acme")
    assert reply["chat"]["thread_id"] == parent


def test_retried_event_is_one_message(slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    payload = payloads.envelope(payloads.message_event("only once"))
    first = app.post(payload)
    retry = app.post(payload, retry_num=1)
    assert first.status_code == 200 and first.json()["status"] == "accepted"
    assert retry.status_code == 200
    assert retry.json() == {"status": "duplicate", "id": first.json()["id"]}
    outbound(slack_hub, "acme")
    assert len(hive.processed()) == 1
    assert slack.post_texts() == ["echo: only once"]
    assert len(history(slack_hub, "acme", direction="inbound")) == 1
    assert [j["kind"] for j in message(slack_hub, first.json()["id"])["jobs"]] == ["route"]


def test_app_mention_and_message_for_one_post_give_one_message(
    slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack
) -> None:
    app = setup_slack(slack_hub)
    ts = payloads.new_ts()
    text = f"<@{payloads.BOT_USER}> status of order 4521?"
    mention = app.post(payloads.envelope(payloads.app_mention_event(text, ts=ts)))
    plain = app.post(payloads.envelope(payloads.message_event(text, ts=ts)))  # another event_id, same (channel, ts)
    assert mention.json()["status"] == "accepted"
    assert plain.json() == {"status": "duplicate", "id": mention.json()["id"]}
    outbound(slack_hub, "acme")
    assert len(hive.processed()) == 1
    assert hive.processed()[0]["message"]["content"]["metadata"]["mentions_bot"] is True
    assert len(slack.posts()) == 1
    assert len(history(slack_hub, "acme", direction="inbound")) == 1


def test_bot_messages_are_stored_but_never_forwarded(slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    other_bot = app.event(payloads.classic_bot_message_event("Deploy finished")).json()
    own = app.event(payloads.own_bot_message_event("posted by the app elsewhere", ts=payloads.new_ts())).json()
    for result in (other_bot, own):
        assert result["status"] == "accepted"
        stored = message(slack_hub, result["id"])
        assert stored["sender"]["is_bot"] is True
        assert stored["jobs"] == []  # no route job was ever created: nothing can reach the agent
    assert message(slack_hub, other_bot["id"])["direction"] == "inbound"
    assert message(slack_hub, own["id"])["direction"] == "outbound"
    assert message(slack_hub, own["id"])["sender"]["is_self"] is True

    # A person's message is answered; Slack echoes the app's reply back, and the echo is the reply itself.
    human = app.event(payloads.message_event("and me?")).json()
    [reply] = [m for m in outbound(slack_hub, "acme", 2) if m["content"]["metadata"].get("in_reply_to") == human["id"]]
    posted = slack.posts()[0]
    echo = app.event(payloads.own_bot_message_event(posted["text"], ts=posted["ts"])).json()
    assert echo == {"status": "duplicate", "id": reply["id"]}
    assert hive.processed_keys() == [human["id"]]
    assert len(slack.posts()) == 1


def test_long_reply_is_split_into_ordered_posts(slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    paragraphs = [f"Paragraph {i}. " + ("All about order 4521 and its journey. " * 28).strip() for i in range(9)]
    long_text = "\n\n".join(paragraphs)[:9000].rstrip() + "."
    assert len(long_text) == 9000
    hive.responder = lambda request: (200, {"reply": long_text})
    parent = payloads.new_ts()
    app.event(payloads.message_event("tell me everything", thread_ts=parent))

    replies = outbound(slack_hub, "acme")
    posts = slack.posts()
    assert len(posts) == 3
    assert all(len(p["text"]) <= 4000 for p in posts)
    assert all(p["thread_ts"] == parent and p["channel"] == payloads.CHANNEL for p in posts)
    # In order, nothing lost, cut at paragraph boundaries.
    assert "\n\n".join(p["text"] for p in posts) == long_text
    assert all(p["text"].startswith("Paragraph ") for p in posts)
    # The reply (or, where the core splits replies into several messages, its first part) carries the
    # first post's id, so a later edit or reaction on it finds the message.
    assert f"{payloads.CHANNEL}:{posts[0]['ts']}" in {m["external_id"] for m in replies}


def test_rate_limit_is_retried_after_retry_after(
    slack_hub_factory: HubFactory, hive: FakeHive, slack: FakeSlack
) -> None:
    hub = slack_hub_factory(OMNI_RETRY_MAX_SECONDS="5")
    app = setup_slack(hub)
    slack.rate_limit("chat.postMessage", retry_after=1)
    app.event(payloads.message_event("busy?"))

    [reply] = outbound(hub, "acme")
    calls = slack.calls("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].time - calls[0].time >= 0.9  # Retry-After: 1 was honoured
    assert slack.post_texts() == ["echo: busy?"]
    first, second = reply["attempts"]
    # A rate limit is waited out, not counted as a failed attempt.
    assert first["outcome"] == "rate_limited" and first["status_code"] == 429 and "ratelimited" in first["error"]
    assert reply["jobs"][0]["attempts"] == 1
    assert second["outcome"] == "ok"


def test_channel_not_found_fails_at_once(slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    slack.missing_channels.add("C0GONE0001")
    app.event(payloads.message_event("anyone?", channel="C0GONE0001"))

    [reply] = outbound(slack_hub, "acme", 1, "failed", "dead")
    assert reply["status"] == "failed"
    [job] = reply["jobs"]
    assert job["status"] == "dead" and job["attempts"] == 1
    assert "channel_not_found" in job["last_error"]
    assert len(slack.calls("chat.postMessage")) == 1


def test_failure_between_parts_resumes_after_the_last_posted_part(
    slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack
) -> None:
    # The core's own splitting into several messages is off: the plugin splits the one message.
    app = setup_slack(slack_hub, split_messages=False)
    long_text = "\n\n".join(f"Part {i}. " + "x " * 1800 for i in range(3))
    hive.responder = lambda request: (200, {"reply": long_text})
    slack.rate_limit("chat.postMessage", retry_after=0, after=1)  # the second post is refused once
    app.event(payloads.message_event("long one please"))

    [reply] = outbound(slack_hub, "acme")
    assert [c.status for c in slack.calls("chat.postMessage")] == [200, 429, 200, 200]
    texts = slack.post_texts()
    assert [t.split(".")[0] for t in texts] == ["Part 0", "Part 1", "Part 2"]  # no part posted twice
    assert all(len(t) <= 4000 for t in texts)
    assert reply["external_id"] == f"{payloads.CHANNEL}:{slack.posts()[0]['ts']}"
    assert [a["outcome"] for a in reply["attempts"]] == ["rate_limited", "ok"]


def test_edits_and_deletions_are_recorded_on_the_original(
    slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack
) -> None:
    app = setup_slack(slack_hub)
    ts = payloads.new_ts()
    original = app.event(payloads.message_event("Is order 4521 shipped?", ts=ts)).json()
    outbound(slack_hub, "acme")

    edit = payloads.envelope(payloads.message_changed_event(ts, "Is order 4521 shipped?", "Is order 4522 shipped?"))
    changed = app.post(edit)
    assert changed.json() == {"status": "updated", "id": original["id"]}
    assert app.post(edit, retry_num=1).json()["status"] == "duplicate"  # a retried edit is recorded once
    stored = message(slack_hub, original["id"])
    assert stored["content"]["text"] == "Is order 4521 shipped?"
    assert stored["content"]["metadata"]["edited"] is True
    assert stored["content"]["metadata"]["edited_text"] == "Is order 4522 shipped?"
    assert len(stored["content"]["metadata"]["changes"]) == 1

    deleted = app.post(payloads.envelope(payloads.message_deleted_event(ts, "Is order 4522 shipped?")))
    assert deleted.json() == {"status": "updated", "id": original["id"]}
    assert message(slack_hub, original["id"])["content"]["metadata"]["deleted"] is True
    # Neither became a new turn.
    assert len(history(slack_hub, "acme", direction="inbound")) == 1
    assert len(hive.processed()) == 1


def test_file_share_reaches_the_agent_as_media(slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    app.event(payloads.file_share_event("here is the invoice"))
    slack.wait_for(1)
    content = hive.processed()[0]["message"]["content"]
    assert content["type"] == "document"
    assert content["text"] == "here is the invoice"
    [media] = content["media"]
    assert media["url"].startswith("https://files.slack.com/files-pri/")
    assert media["mime_type"] == "application/pdf"
    assert media["filename"] == "invoice-4521.pdf"
    assert media["size"] == 48213


def test_media_reply_is_uploaded_with_files_upload_v2(slack_hub: HubProcess, hive: FakeHive, slack: FakeSlack) -> None:
    app = setup_slack(slack_hub)
    pdf = b"%PDF-1.4 fake invoice bytes"
    url = slack.host_file("invoice.pdf", pdf, "application/pdf")
    hive.responder = lambda request: (
        200,
        {
            "reply": {
                "text": "Your invoice:",
                "media": [{"url": url, "mime_type": "application/pdf", "filename": "invoice-4521.pdf"}],
            }
        },
    )
    parent = payloads.new_ts()
    app.event(payloads.message_event("invoice please", thread_ts=parent))

    [reply] = outbound(slack_hub, "acme")
    assert slack.post_texts() == ["Your invoice:"]
    [upload] = slack.uploads()
    assert upload.channel_id == payloads.CHANNEL and upload.thread_ts == parent
    [file] = upload.files
    assert file["content"] == pdf and file["name"] == "invoice-4521.pdf"
    assert reply["external_id"] == f"{payloads.CHANNEL}:{slack.posts()[0]['ts']}"


def test_send_api_posts_to_a_channel(slack_hub: HubProcess, slack: FakeSlack) -> None:
    setup_slack(slack_hub)
    r = slack_hub.admin.post(
        "/messages/send", json={"tenant": "acme", "instance": "acme-slack", "to": "#C0SUPPORT", "text": "Heads up"}
    )
    assert r.status_code == 202, r.text
    sent = wait_status(slack_hub, r.json()["id"], "sent")
    assert slack.posts()[0]["channel"] == "C0SUPPORT"
    assert sent["external_id"] == f"C0SUPPORT:{slack.posts()[0]['ts']}"
    bad = slack_hub.admin.post(
        "/messages/send", json={"tenant": "acme", "instance": "acme-slack", "to": "general", "text": "x"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_recipient"
