"""Checks of the fake servers themselves (and of the Hive plugin against FakeHive)."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from omni_hive.plugin import call_hive
from omni_hive.wire import HiveTarget

from omni_core import Chat, Content, Message, PermanentError, RouteContext, Sender, Tenant, TransientError

from .evolution import FakeEvolution
from .hive import FakeHive
from .server import Response, ServerThread

EVO_KEY = "evo-key-for-fake-tests"
HIVE_KEY = "hive-key-for-fake-tests"


@pytest.fixture(scope="module")
def evo_server() -> Iterator[FakeEvolution]:
    with FakeEvolution(api_key=EVO_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def hive_server() -> Iterator[FakeHive]:
    with FakeHive(api_key=HIVE_KEY) as server:
        yield server


@pytest.fixture
def evo(evo_server: FakeEvolution) -> Iterator[FakeEvolution]:
    evo_server.reset()
    yield evo_server
    evo_server.reset()


@pytest.fixture
def hive(hive_server: FakeHive) -> Iterator[FakeHive]:
    hive_server.reset()
    yield hive_server
    hive_server.reset()


@pytest.fixture
def evo_client(evo: FakeEvolution) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=evo.url, headers={"apikey": EVO_KEY}, timeout=5) as client:
        yield client


def hive_post(hive: FakeHive, key: str | None, text: str = "hi", tenant: str = "ten_a", **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {HIVE_KEY}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    body = {"tenant": tenant, "message": {"id": key, "content": {"type": "text", "text": text}}}
    return httpx.post(hive.url + "/process", json=body, headers=headers, timeout=kw.pop("timeout", 5), **kw)


# --- server helper -----------------------------------------------------------------------------------
def test_server_thread_restarts_on_same_port() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = ServerThread(app)
    with server:
        url = server.url
        assert httpx.get(url).text == "ok"
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
    with server:
        assert server.url == url and httpx.get(url).text == "ok"


# --- Evolution: auth and instances ---------------------------------------------------------------
def test_evolution_rejects_missing_or_wrong_apikey(evo: FakeEvolution) -> None:
    for headers in ({}, {"apikey": "wrong"}):
        r = httpx.get(evo.url + "/instance/connectionState/x", headers=headers)
        assert r.status_code == 401
        assert r.json() == {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}}


def test_evolution_instance_lifecycle(evo: FakeEvolution, evo_client: httpx.Client) -> None:
    r = evo_client.post(
        "/instance/create",
        json={
            "instanceName": "acme",
            "integration": "WHATSAPP-BAILEYS",
            "qrcode": True,
            "webhook": {"url": "http://hub/webhooks/evolution", "headers": {"authorization": "Bearer s"}},
        },
    )
    assert r.status_code == 201
    data = r.json()
    assert data["instance"]["instanceName"] == "acme"
    assert data["instance"]["status"] == "connecting"
    assert re.fullmatch(r"[0-9a-f-]{36}", data["instance"]["instanceId"])
    assert data["webhook"]["webhookUrl"] == "http://hub/webhooks/evolution"
    qr = data["qrcode"]
    assert qr["count"] == 1 and qr["pairingCode"] is None and qr["code"].startswith("2@")
    assert qr["base64"].startswith("data:image/png;base64,")
    assert base64.b64decode(qr["base64"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert evo.instance("acme")["webhook"]["headers"] == {"authorization": "Bearer s"}  # type: ignore[index]

    again = evo_client.post("/instance/create", json={"instanceName": "acme"})
    assert again.status_code == 403 and again.json()["error"] == "Forbidden"

    state = evo_client.get("/instance/connectionState/acme").json()
    assert state == {"instance": {"instanceName": "acme", "state": "connecting"}}
    connect = evo_client.get("/instance/connect/acme", params={"number": "5511999999999"}).json()
    assert connect["count"] == 2 and re.fullmatch(r"[A-Z0-9]{8}", connect["pairingCode"])

    evo.set_state("acme", "open")
    assert evo_client.get("/instance/connect/acme").json() == {"instance": {"instanceName": "acme", "state": "open"}}

    # the instance's own token (hash) authenticates calls for that instance only
    token = data["hash"]
    assert httpx.get(evo.url + "/instance/connectionState/acme", headers={"apikey": token}).status_code == 200
    assert httpx.get(evo.url + "/instance/fetchInstances", headers={"apikey": token}).status_code == 401

    deleted = evo_client.delete("/instance/delete/acme")
    assert deleted.json() == {"status": "SUCCESS", "error": False, "response": {"message": "Instance deleted"}}
    missing = evo_client.delete("/instance/delete/acme")
    assert missing.status_code == 404
    assert missing.json() == {
        "status": 404,
        "error": "Not Found",
        "response": {"message": ['The "acme" instance does not exist']},
    }


def test_evolution_create_without_qrcode_has_no_qr(evo_client: httpx.Client) -> None:
    data = evo_client.post("/instance/create", json={"instanceName": "quiet"}).json()
    assert "qrcode" not in data and data["instance"]["status"] == "close"


# --- Evolution: sending ----------------------------------------------------------------------------
def test_evolution_send_text(evo: FakeEvolution, evo_client: httpx.Client) -> None:
    r = evo_client.post("/message/sendText/anything", json={"number": "5511999999999", "text": "Olá"})
    assert r.status_code == 201
    data = r.json()
    assert data["key"]["remoteJid"] == "5511999999999@s.whatsapp.net"
    assert data["key"]["fromMe"] is True
    assert re.fullmatch(r"3EB0[0-9A-F]{20}", data["key"]["id"])
    assert data["status"] == "PENDING" and data["source"] == "web"
    assert data["message"] == {"conversation": "Olá"} and data["messageType"] == "conversation"
    assert isinstance(data["messageTimestamp"], int) and data["instanceId"]
    assert evo.sent_texts() == [{"number": "5511999999999", "text": "Olá"}]
    assert evo.sent_message_ids() == [data["key"]["id"]]


def test_evolution_send_validation_and_unknown_instance(evo: FakeEvolution, evo_client: httpx.Client) -> None:
    r = evo_client.post("/message/sendText/x", json={"number": "5511"})
    assert r.status_code == 400 and r.json()["error"] == "Bad Request"
    assert r.json()["response"]["message"] == ['instance requires property "text"']
    r = evo_client.post("/message/sendMedia/x", json={"number": "5511", "mediatype": "gif", "media": "http://a"})
    assert r.status_code == 400
    evo.not_on_whatsapp.add("5511900000000")
    r = evo_client.post("/message/sendText/x", json={"number": "5511900000000", "text": "t"})
    assert r.status_code == 400
    assert r.json()["response"]["message"] == [
        {"jid": "5511900000000@s.whatsapp.net", "exists": False, "number": "5511900000000"}
    ]
    evo.accept_any_instance = False
    r = evo_client.post("/message/sendText/ghost", json={"number": "5511", "text": "t"})
    assert r.status_code == 404 and r.json()["response"]["message"] == ['The "ghost" instance does not exist']
    assert evo.sent_texts() == []


def test_evolution_send_media(evo: FakeEvolution, evo_client: httpx.Client) -> None:
    evo.add_instance("known")
    body = {"number": "120363@g.us", "mediatype": "image", "media": "https://cdn/x.jpg", "caption": "c"}
    data = evo_client.post("/message/sendMedia/known", json=body).json()
    assert data["key"]["remoteJid"] == "120363@g.us"
    assert data["messageType"] == "imageMessage"
    assert data["message"]["imageMessage"]["caption"] == "c"
    assert data["instanceId"] == evo.instance("known")["instance_id"]  # type: ignore[index]
    assert evo.sent_media() == [body]


# --- Controls (shared by both fakes) -----------------------------------------------------------------
def test_fail_next_with_path_filter_and_retry_after(evo: FakeEvolution, evo_client: httpx.Client) -> None:
    evo.fail_next(2, status=503, retry_after=1.5, path="/message/")
    assert evo_client.get("/instance/fetchInstances").status_code == 200  # not matched by the filter
    first = evo_client.post("/message/sendText/a", json={"number": "1", "text": "t"})
    assert first.status_code == 503 and first.headers["retry-after"] == "1.5"
    assert first.json()["status"] == 503
    assert evo_client.post("/message/sendText/a", json={"number": "1", "text": "t"}).status_code == 503
    assert evo_client.post("/message/sendText/a", json={"number": "1", "text": "t"}).status_code == 201
    assert len(evo.sent_texts()) == 1
    assert [r.injected for r in evo.requests_to("/message/")] == [True, True, False]


async def test_latency_does_not_serialize_requests(evo: FakeEvolution) -> None:
    evo.latency = 0.3
    async with httpx.AsyncClient(base_url=evo.url, headers={"apikey": EVO_KEY}) as client:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.post("/message/sendText/a", json={"number": "1", "text": str(i)}) for i in range(20))
        )
        elapsed = time.monotonic() - started
    assert all(r.status_code == 201 for r in results)
    assert elapsed < 1.5, elapsed
    sends = await evo.wait_for_async(20, timeout=2)
    assert sorted(int(r.body["text"]) for r in sends) == list(range(20))


def test_wait_for_blocks_until_sends_arrive(evo: FakeEvolution) -> None:
    def later() -> None:
        time.sleep(0.2)
        for i in range(3):
            httpx.post(
                evo.url + "/message/sendText/a", json={"number": "1", "text": str(i)}, headers={"apikey": EVO_KEY}
            )

    threading.Thread(target=later).start()
    sends = evo.wait_for(3, timeout=5)
    assert [r.body["text"] for r in sends] == ["0", "1", "2"]
    assert evo.wait_for(lambda: len(evo.sent_texts()) == 3, timeout=1)
    assert evo.wait_for(lambda fake: fake.sent_texts()[0]["text"] == "0", timeout=1)
    with pytest.raises(AssertionError, match="timed out"):
        evo.wait_for(4, timeout=0.2)


def test_set_down_refuses_then_recovers_on_same_port(evo: FakeEvolution) -> None:
    url = evo.url
    evo.set_down(True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/instance/fetchInstances", headers={"apikey": EVO_KEY})
    evo.set_down(False)
    assert evo.url == url
    assert httpx.get(url + "/instance/fetchInstances", headers={"apikey": EVO_KEY}).status_code == 200
    evo.set_down(True, refuse=False)
    assert httpx.get(url + "/instance/fetchInstances", headers={"apikey": EVO_KEY}).status_code == 503
    evo.set_down(False)
    assert httpx.get(url + "/instance/fetchInstances", headers={"apikey": EVO_KEY}).status_code == 200


# --- Hive ----------------------------------------------------------------------------------------------
def test_hive_auth_and_idempotency_key_required(hive: FakeHive) -> None:
    r = httpx.post(hive.url + "/process", json={"message": {}}, headers={"Idempotency-Key": "k"})
    assert r.status_code == 401
    r = httpx.post(
        hive.url + "/process", json={"message": {}}, headers={"Authorization": "Bearer nope", "Idempotency-Key": "k"}
    )
    assert r.status_code == 401
    assert hive_post(hive, None).status_code == 400
    assert hive.processed_keys() == []


def test_hive_default_echo_and_idempotent_replay(hive: FakeHive) -> None:
    first = hive_post(hive, "msg_1", "hello")
    assert first.status_code == 200 and first.json() == {"reply": "echo: hello"}
    replay = hive_post(hive, "msg_1", "something else")
    assert replay.json() == {"reply": "echo: hello"}
    assert hive.processed_keys() == ["msg_1"] and hive.duplicates == 1
    assert hive.received_texts() == ["hello"]
    assert [r.duplicate for r in hive.requests] == [False, True]


async def test_hive_concurrent_duplicates_processed_once(hive: FakeHive) -> None:
    hive.latency = 0.2
    async with httpx.AsyncClient(base_url=hive.url, headers={"Authorization": f"Bearer {HIVE_KEY}"}) as client:
        body = {"tenant": "t", "message": {"content": {"text": "x"}}}
        results = await asyncio.gather(
            *(client.post("/process", json=body, headers={"Idempotency-Key": "same"}) for _ in range(5))
        )
    assert [r.json() for r in results] == [{"reply": "echo: x"}] * 5
    assert hive.processed_keys() == ["same"] and hive.duplicates == 4


def test_hive_failures_are_not_cached(hive: FakeHive) -> None:
    hive.fail_next(1, status=503, retry_after=2)
    failed = hive_post(hive, "msg_f")
    assert failed.status_code == 503 and failed.headers["retry-after"] == "2"
    ok = hive_post(hive, "msg_f")
    assert ok.status_code == 200 and hive.processed_keys() == ["msg_f"] and hive.duplicates == 0


def test_hive_custom_responder(hive: FakeHive) -> None:
    hive.responder = lambda req: (202, None)
    r = hive_post(hive, "a1")
    assert r.status_code == 202 and r.content == b""

    async def slow(req: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        await asyncio.sleep(0.01)
        return 200, {"messages": [{"text": "1"}, {"text": "2"}]}, {"X-Agent": "sales"}

    hive.responder = slow
    r = hive_post(hive, "a2")
    assert r.json() == {"messages": [{"text": "1"}, {"text": "2"}]} and r.headers["x-agent"] == "sales"
    hive.responder = lambda req: Response(429, {"detail": "slow down"}, {"Retry-After": "1"})
    assert hive_post(hive, "a3").status_code == 429
    assert hive.processed_keys() == ["a1", "a2"]


async def test_hive_per_tenant_latency(hive: FakeHive) -> None:
    hive.set_latency(0.5, tenant="slow")
    async with httpx.AsyncClient(base_url=hive.url, headers={"Authorization": f"Bearer {HIVE_KEY}"}) as client:

        async def post(tenant: str, key: str) -> float:
            started = time.monotonic()
            body = {"tenant": tenant, "message": {"content": {"text": key}}}
            r = await client.post("/process", json=body, headers={"Idempotency-Key": key})
            assert r.status_code == 200
            return time.monotonic() - started

        slow, fast = await asyncio.gather(post("slow", "k1"), post("fast", "k2"))
    assert slow >= 0.5 and fast < 0.3
    assert hive.processed_keys() == ["k2", "k1"]


def test_hive_down(hive: FakeHive) -> None:
    hive.set_down(True, refuse=False)
    assert hive_post(hive, "d1").status_code == 503
    hive.set_down(False)
    assert hive_post(hive, "d1").status_code == 200


# --- the Hive plugin against FakeHive ----------------------------------------------------------------
def _message(text: str, msg_id: str) -> Message:
    return Message(
        id=msg_id,
        source="whatsapp",
        tenant="ten_a",
        instance="acme",
        direction="inbound",
        chat=Chat(id="5511@s.whatsapp.net"),
        sender=Sender(id="5511@s.whatsapp.net"),
        content=Content(text=text),
        timestamp="2025-10-21T14:30:00.000Z",
    )


async def test_plugin_round_trip_and_errors(hive: FakeHive) -> None:
    tenant = Tenant(id="ten_a", name="Acme")
    context = RouteContext(session_id="ses_1", tenant={"id": "ten_a"}, history=[])
    target = HiveTarget(api_url=hive.url, api_key=HIVE_KEY, timeout=0.2)
    async with httpx.AsyncClient() as http:
        reply = await call_hive(http, target, tenant, _message("ping", "msg_p1"), context)
        assert [p.text for p in reply.parts] == ["echo: ping"]
        sent = hive.requests[-1]
        assert sent.headers["idempotency-key"] == "msg_p1" and sent.headers["authorization"] == f"Bearer {HIVE_KEY}"
        assert sent.body["routing_hints"] == {"preferred_agent": None, "priority": "normal", "session_id": "ses_1"}

        hive.latency = 0.4
        with pytest.raises(TransientError, match="timed out"):
            await call_hive(http, target, tenant, _message("slow", "msg_p2"), context)
        hive.latency = 0
        hive.wait_for(lambda: "msg_p2" in hive.processed_keys(), timeout=3)
        retry = await call_hive(http, target, tenant, _message("slow", "msg_p2"), context)  # replayed, not reprocessed
        assert [p.text for p in retry.parts] == ["echo: slow"] and hive.duplicates == 1

        bad_key = HiveTarget(api_url=hive.url, api_key="wrong-key", timeout=1)
        with pytest.raises(PermanentError, match="HTTP 401") as info:
            await call_hive(http, bad_key, tenant, _message("x", "msg_p3"), context)
        assert "wrong-key" not in str(info.value)

        hive.fail_next(1, status=503, retry_after=4)
        with pytest.raises(TransientError) as transient:
            await call_hive(http, target, tenant, _message("x", "msg_p4"), context)
        assert transient.value.retry_after == 4.0

        hive.set_down(True)
        try:
            with pytest.raises(TransientError, match="unreachable"):
                await call_hive(http, target, tenant, _message("x", "msg_p5"), context)
        finally:
            hive.set_down(False)

        with pytest.raises(PermanentError, match="no HIVE_API_URL"):
            await call_hive(
                http, HiveTarget(api_url=None, api_key=None, timeout=1), tenant, _message("x", "m"), context
            )
