"""Traces, sanitization, retention, metrics and readiness."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import evolution_payloads as evo
from tests.conftest import HubFactory
from tests.e2e.helpers import history, post_webhook, setup_tenant, wait_status, wait_until
from tests.fakes.evolution import FakeEvolution
from tests.fakes.hive import FakeHive
from tests.fakes.receiver import FakeReceiver
from tests.hub_process import HubProcess

PHONE = "5511955554444"
SECRET_TEXT = "meu cpf é 123.456.789-00 e meu email é ana.souza@example.com"


def stages(hub: HubProcess, message_id: str) -> list[tuple[str, str]]:
    body = hub.admin.get(f"/messages/{message_id}/trace").json()
    return [(s["stage"], s["outcome"]) for s in body["stages"]]


def stages_with(hub: HubProcess, message_id: str, wanted: tuple[str, str]) -> list[tuple[str, str]]:
    """The message's stages, once ``wanted`` is among them."""

    def check() -> list[tuple[str, str]] | None:
        found = stages(hub, message_id)
        return found if wanted in found else None

    result: list[tuple[str, str]] = wait_until(check, what=f"stage {wanted}")
    return result


def metric_values(hub: HubProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(hub.url + "/metrics", timeout=5).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_a_round_trip_leaves_every_stage(hub: HubProcess, hive: FakeHive, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    payload = evo.upsert("acme-sales", "qual o preço?", phone=PHONE)
    inbound = post_webhook(hub, tenant, payload).json()["id"]
    post_webhook(hub, tenant, payload)  # a repeat
    evolution.wait_for(1, timeout=10)
    [reply] = history(hub, "acme", direction="outbound")
    wait_status(hub, reply["id"], "sent")
    got = stages_with(hub, inbound, ("agent_response", "replies:1"))
    assert got[:3] == [("received", "ok"), ("normalized", "ok"), ("deduplicated", "new")]
    assert ("routed", "ok") in got and ("agent_request", "ok") in got
    assert ("deduplicated", "duplicate") in got
    assert ("deliver", "ok") in stages(hub, reply["id"])
    trace = hub.admin.get(f"/messages/{inbound}/trace").json()
    assert trace["elapsed_ms"] is not None and all(s["at"] for s in trace["stages"])
    agent = next(s for s in trace["stages"] if s["stage"] == "agent_request")
    assert agent["plugin"] == "hive" and agent["duration_ms"] > 0 and agent["attempt"] == 1
    # Tenants see only their own traces.
    other = hub.create_tenant("other")
    assert hub.client(other["api_key"]).get(f"/messages/{inbound}/trace").status_code == 404
    assert hub.client(other["api_key"]).get("/traces").json()["traces"] == []
    assert hub.client(tenant["api_key"]).get("/traces", params={"message_id": inbound}).json()["traces"]


def test_a_failure_is_traced_with_its_reason(hub: HubProcess, hive: FakeHive) -> None:
    tenant = setup_tenant(hub)
    hive.fail_next(1, 400)
    inbound = post_webhook(hub, tenant, evo.upsert("acme-sales", "erro")).json()["id"]
    wait_status(hub, inbound, "failed")
    got = stages_with(hub, inbound, ("failed", "permanent"))
    assert ("agent_request", "dead") in got
    failed = hub.admin.get("/traces", params={"message_id": inbound, "status": "permanent"}).json()["traces"]
    assert failed and "400" in failed[0]["error"]


def test_no_user_data_in_traces_or_logs_by_default(
    hub_factory: HubFactory, hive: FakeHive, evolution: FakeEvolution
) -> None:
    hub = hub_factory(OMNI_LOG_LEVEL="debug")
    tenant = setup_tenant(hub)
    evolution.not_on_whatsapp.add(PHONE)  # the send fails with an error that quotes the number
    inbound = post_webhook(hub, tenant, evo.upsert("acme-sales", SECRET_TEXT, phone=PHONE)).json()["id"]
    [reply] = wait_until(lambda: history(hub, "acme", direction="outbound"))
    wait_status(hub, reply["id"], "failed")
    wait_until(lambda: ("failed", "permanent") in stages(hub, reply["id"]))
    dumped = hub.admin.get("/traces", params={"limit": 1000}).text + hub.logs()
    for leaked in (PHONE, "ana.souza", "123.456.789", "meu cpf"):
        assert leaked not in dumped, leaked
    failed = hub.admin.get("/traces", params={"message_id": reply["id"], "status": "permanent"}).json()["traces"]
    assert "not on WhatsApp" in failed[0]["error"]  # the reason stays readable
    assert inbound in dumped  # identifiers are kept


def test_sensitive_mode_keeps_the_details(hub_factory: HubFactory, hive: FakeHive, evolution: FakeEvolution) -> None:
    hub = hub_factory(TRACE_INCLUDE_SENSITIVE="true")
    tenant = setup_tenant(hub)
    evolution.not_on_whatsapp.add(PHONE)
    post_webhook(hub, tenant, evo.upsert("acme-sales", "oi", phone=PHONE))
    [reply] = wait_until(lambda: history(hub, "acme", direction="outbound"))
    wait_status(hub, reply["id"], "failed")
    failed = wait_until(
        lambda: hub.admin.get("/traces", params={"message_id": reply["id"], "status": "permanent"}).json()["traces"]
    )
    assert PHONE in failed[0]["error"]


def test_retention_purges_traces_and_old_history(hub_factory: HubFactory, hive: FakeHive) -> None:
    hub = hub_factory(TRACE_RETENTION_DAYS="0.00002", OMNI_PURGE_INTERVAL_SECONDS="0.3")  # ~1.7 s
    tenant = setup_tenant(hub, history_retention_days=0.00002)
    keeper = hub.create_tenant("keeper")
    hub.admin.post("/instances/create", json={"instanceName": "keeper-wa", "tenant": "keeper"})
    inbound = post_webhook(hub, tenant, evo.upsert("acme-sales", "some em breve")).json()["id"]
    kept = post_webhook(hub, keeper, evo.upsert("keeper-wa", "fico")).json()["id"]
    wait_status(hub, inbound, "forwarded")
    assert stages(hub, inbound)
    wait_until(lambda: hub.admin.get(f"/messages/{inbound}").status_code == 404, timeout=15, what="the purge")
    assert hub.admin.get("/traces", params={"message_id": kept}).json()["traces"] == []  # traces purged for all
    assert hub.admin.get(f"/messages/{kept}").status_code == 200  # no retention set: history kept


def test_metrics_parse_and_move(hub: HubProcess, hive: FakeHive, evolution: FakeEvolution) -> None:
    before = metric_values(hub)
    tenant = setup_tenant(hub)
    post_webhook(hub, tenant, evo.upsert("acme-sales", "métrica"))
    evolution.wait_for(1, timeout=10)
    [reply] = history(hub, "acme", direction="outbound")
    wait_status(hub, reply["id"], "sent")
    after = metric_values(hub)
    key = ("omni_messages_received_total", (("channel", "whatsapp"), ("tenant", "acme")))
    assert after[key] == before.get(key, 0) + 1
    assert after[("omni_messages_sent_total", (("channel", "whatsapp"), ("tenant", "acme")))] == 1
    assert after[("omni_delivery_attempts_total", (("kind", "route"), ("outcome", "ok")))] >= 1
    assert after[("omni_webhook_ack_seconds_count", (("channel", "whatsapp"),))] >= 1
    assert after[("omni_end_to_end_seconds_count", (("channel", "whatsapp"),))] >= 1
    assert after[("omni_agent_seconds_count", (("backend", "hive"), ("outcome", "ok")))] >= 1
    assert ("omni_queue_depth", ()) in after and ("omni_queue_oldest_age_seconds", ()) in after
    assert (
        after[
            ("omni_instance_connected", (("channel", "whatsapp"), ("instance", "acme-sales"), ("state", "connecting")))
        ]
        == 0
    )


def test_tenant_label_can_be_switched_off(hub_factory: HubFactory, hive: FakeHive) -> None:
    hub = hub_factory(OMNI_METRICS_TENANT_LABEL="false")
    tenant = setup_tenant(hub)
    post_webhook(hub, tenant, evo.upsert("acme-sales", "sem rótulo"))
    values = metric_values(hub)
    assert values[("omni_messages_received_total", (("channel", "whatsapp"),))] == 1


def test_readiness_names_the_failing_check(hub_factory: HubFactory, hive: FakeHive) -> None:
    # One worker and a slow agent: runnable jobs wait longer than the readiness limit.
    hub = hub_factory(OMNI_READY_MAX_QUEUE_AGE_SECONDS="1", OMNI_WORKERS="1")
    ok = httpx.get(hub.url + "/health/ready", timeout=5)
    assert ok.status_code == 200 and ok.json()["failing"] == []
    assert {"database", "migrations", "queue", "workers"} <= set(ok.json()["checks"])
    tenant = setup_tenant(hub)
    hive.set_latency(4.0)
    for n in range(3):
        post_webhook(hub, tenant, evo.upsert("acme-sales", f"fila {n}", phone=f"551190000{n:04d}"))
    time.sleep(2.2)
    stuck = httpx.get(hub.url + "/health/ready", timeout=5)
    assert stuck.status_code == 503 and stuck.json()["failing"] == ["queue"]
    assert httpx.get(hub.url + "/health", timeout=5).status_code == 200  # liveness stays up


def test_jobs_waiting_for_a_retry_do_not_fail_readiness(hub_factory: HubFactory, hive: FakeHive) -> None:
    hub = hub_factory(OMNI_READY_MAX_QUEUE_AGE_SECONDS="1", OMNI_RETRY_BASE_SECONDS="5", OMNI_RETRY_MAX_SECONDS="5")
    tenant = setup_tenant(hub)
    hive.set_down(True)  # the job fails and waits seconds for its next attempt: scheduled, not stuck
    post_webhook(hub, tenant, evo.upsert("acme-sales", "aguardando"))
    time.sleep(2.2)
    assert httpx.get(hub.url + "/health/ready", timeout=5).status_code == 200


def test_tracing_can_be_switched_off(hub_factory: HubFactory, hive: FakeHive) -> None:
    hub = hub_factory(ENABLE_TRACING="false")
    tenant = setup_tenant(hub)
    inbound = post_webhook(hub, tenant, evo.upsert("acme-sales", "sem rastros")).json()["id"]
    wait_status(hub, inbound, "forwarded")
    assert stages(hub, inbound) == []


def test_opentelemetry_spans_are_exported_and_reach_hive(
    hub_factory: HubFactory, hive: FakeHive, receiver: FakeReceiver
) -> None:
    hub = hub_factory(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url + "/otlp", OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SERVICE_NAME="omni-test"
    )
    tenant = setup_tenant(hub)
    post_webhook(hub, tenant, evo.upsert("acme-sales", "rastreado"))
    hive.wait_for(1, timeout=10)
    traceparent = hive.processed_requests()[0].headers.get("traceparent", "")
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", traceparent), traceparent
    exported = receiver.wait_for(lambda: receiver.requests_to("/otlp/v1/traces"), timeout=10)
    assert exported[0].headers["content-type"] == "application/x-protobuf"
    # The agent call is a child of the webhook's trace: the trace id appears in the exported spans.
    trace_id = bytes.fromhex(traceparent.split("-")[1])
    assert any(trace_id in r.raw for r in receiver.requests_to("/otlp/v1/traces"))


def exported_spans(receiver: FakeReceiver) -> list[tuple[str, bytes, bytes, bytes]]:
    """(name, trace id, span id, parent span id) of every span the hub exported over OTLP/HTTP."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = []
    for request in receiver.requests_to("/otlp/v1/traces"):
        export = ExportTraceServiceRequest()
        export.ParseFromString(request.raw)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                spans += [(s.name, s.trace_id, s.span_id, s.parent_span_id) for s in scope.spans]
    return spans


def wait_for_spans(receiver: FakeReceiver, names: set[str]) -> list[tuple[str, bytes, bytes, bytes]]:
    """The exported spans, once spans of every name in ``names`` are among them."""

    def complete() -> list[tuple[str, bytes, bytes, bytes]] | None:
        spans = exported_spans(receiver)
        return spans if names <= {s[0] for s in spans} else None

    found: list[tuple[str, bytes, bytes, bytes]] = wait_until(complete, timeout=10, what=f"spans {sorted(names)}")
    return found


def test_the_reply_delivery_joins_the_message_trace(
    hub_factory: HubFactory, hive: FakeHive, evolution: FakeEvolution, receiver: FakeReceiver
) -> None:
    hub = hub_factory(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url + "/otlp", OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SERVICE_NAME="omni-test"
    )
    tenant = setup_tenant(hub)
    post_webhook(hub, tenant, evo.upsert("acme-sales", "rastreado ate o fim"))
    evolution.wait_for(1, timeout=10)
    spans = wait_for_spans(receiver, {"omni.webhook", "omni.route", "omni.deliver"})
    [webhook] = [s for s in spans if s[0] == "omni.webhook"]
    [route] = [s for s in spans if s[0] == "omni.route"]
    [deliver] = [s for s in spans if s[0] == "omni.deliver"]
    assert deliver[1] == webhook[1]  # one trace from the webhook to the reply's delivery
    assert deliver[3] == route[2]  # the delivery is the route step's child


def test_uvicorn_lines_are_hub_json_lines(hub: HubProcess) -> None:
    with socket.create_connection(("127.0.0.1", hub.port), timeout=5) as conn:
        conn.sendall(b"NOT HTTP AT ALL\x00\r\n\r\n")
        conn.recv(1024)  # uvicorn answers 400 and closes
    line = wait_until(
        lambda: next((r for r in map(json.loads, hub.logs().splitlines()) if r.get("logger") == "uvicorn.error"), None),
        what="uvicorn's warning in the hub log",
    )
    assert line["level"] == "warning" and "Invalid HTTP request" in line["event"]
    assert all(json.loads(text) for text in hub.logs().splitlines() if text.strip())  # every line is JSON


def test_tenant_webhook_deliveries_join_the_trace_with_otel_settings_from_dotenv(
    hub_factory: HubFactory, receiver: FakeReceiver
) -> None:
    hub = hub_factory(hive_enabled=False, start=False, OMNI_WEBHOOK_ALLOW_PRIVATE="true")
    # OTEL_* only in the hub's .env (its working directory), as an operator would set them.
    (hub.data_dir / ".env").write_text(
        f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.url}/otlp\nOTEL_BSP_SCHEDULE_DELAY=100\n", encoding="utf-8"
    )
    hub.start()
    tenant = setup_tenant(hub)
    r = hub.client(tenant["api_key"]).post(
        "/tenants/acme/webhooks", json={"url": f"{receiver.url}/hook", "events": ["message.inbound"]}
    )
    assert r.status_code == 201, r.text
    post_webhook(hub, tenant, evo.upsert("acme-sales", "rastreado ate o cliente"))
    spans = wait_for_spans(receiver, {"omni.webhook", "omni.webhook_delivery"})
    [webhook] = [s for s in spans if s[0] == "omni.webhook"]
    [delivery] = [s for s in spans if s[0] == "omni.webhook_delivery"]
    assert delivery[1] == webhook[1] and delivery[3] == webhook[2]  # same trace, child of the ingest
    assert receiver.requests_to("/hook")


def test_failed_messages_are_counted_by_their_channel(
    hub: HubProcess, hive: FakeHive, evolution: FakeEvolution
) -> None:
    tenant = setup_tenant(hub)
    evolution.not_on_whatsapp.add(PHONE)  # the reply's send fails for good
    post_webhook(hub, tenant, evo.upsert("acme-sales", "vai falhar", phone=PHONE))
    [reply] = wait_until(lambda: history(hub, "acme", direction="outbound"))
    wait_status(hub, reply["id"], "failed")
    key = ("omni_messages_failed_total", (("channel", "whatsapp"), ("reason", "permanent"), ("tenant", "acme")))
    assert wait_until(lambda: metric_values(hub).get(key), what="the failure counted under channel whatsapp") == 1
    assert not any(k[0] == "omni_messages_failed_total" and ("channel", "deliver") in k[1] for k in metric_values(hub))
