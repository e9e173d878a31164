"""Standard Webhooks signing, checked against the `standardwebhooks` package (independent implementation)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from omni_core import signing


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=2000).map(lambda b: b.hex().encode()), msg_id=st.text("abcdef0123_", min_size=1))
def test_signatures_verify_with_the_reference_library(body: bytes, msg_id: str) -> None:
    secret = signing.new_secret()
    now = int(datetime.now(UTC).timestamp())
    headers = signing.headers([secret], msg_id, now, body)
    Webhook(secret).verify(body, headers, json_parse=False)


def test_rotation_signs_with_both_secrets() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    now = int(datetime.now(UTC).timestamp())
    body = b'{"type":"message.inbound"}'
    headers = signing.headers([new, old], "evt_1", now, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + b" ", headers)


@pytest.mark.parametrize("bad", ["nope", "whsec_!!!", "whsec_" + "QUJD", ""])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        signing.secret_bytes(bad)
