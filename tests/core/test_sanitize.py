"""Sanitizing traces and logs: by field and by pattern."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from omni_core.sanitize import scrub, scrub_text


def test_patterns_in_free_text() -> None:
    text = (
        "evolution sendText 400: number 5511999990000 is not on WhatsApp; jid 5511988887777@s.whatsapp.net, "
        "mail ana.silva+vip@example.com.br, call +55 (11) 97777-6666, file https://cdn.test/a.jpg?sig=abc"
    )
    out = scrub_text(text)
    for leaked in ("5511999990000", "5511988887777", "ana.silva", "97777", "cdn.test", "sig=abc"):
        assert leaked not in out, leaked
    assert "evolution sendText 400" in out and "is not on WhatsApp" in out


def test_fields_are_replaced_whole_and_secrets_hidden() -> None:
    event = {
        "message": {"content": {"text": "meu cpf é 123"}, "chat_id": "5511@s.whatsapp.net"},
        "api_key": "sk-123",
        "attempt": 3,
        "error": "HTTP 503",
    }
    out = scrub(event)
    assert out["message"]["content"] == "[redacted]"
    assert out["message"]["chat_id"] == "[redacted]"
    assert out["api_key"] == "[secret]"
    assert out["attempt"] == 3 and out["error"] == "HTTP 503"


@given(digits=st.text(alphabet="0123456789", min_size=8, max_size=15), prefix=st.sampled_from(["", "+", "tel "]))
def test_any_phone_number_is_removed(digits: str, prefix: str) -> None:
    assert digits not in scrub_text(f"failed for {prefix}{digits} today")
