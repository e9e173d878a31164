"""The Hive plugin's tenant-config validator (omni_hive.validate_config): a pure function, so
property-tested here; the API side is in tests/e2e/test_tenant_config_validation.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from omni_hive import plugin, resolve_target, validate_config

HOST = st.from_regex(r"\A[a-z][a-z0-9-]{0,15}(\.[a-z]{2,8}){0,2}\Z") | st.sampled_from(
    ["127.0.0.1", "[::1]", "hive", "localhost"]
)
GOOD_URL = st.builds(
    lambda scheme, auth, host, port, path, pad: f"{pad}{scheme}://{auth}{host}{port}{path}{pad}",
    st.sampled_from(["http", "https", "HTTPS"]),
    st.sampled_from(["", "user:pw@"]),
    HOST,
    st.none().map(lambda _: "") | st.integers(1, 65535).map(lambda p: f":{p}"),
    st.lists(st.from_regex(r"\A[A-Za-z0-9_.~-]{1,10}\Z"), max_size=3).map(lambda s: "/" + "/".join(s)) | st.just(""),
    st.sampled_from(["", " "]),
)
FLAG_WORDS = ["true", "false", "yes", "no", "on", "off", "1", "0", ""]
GOOD_FLAG = st.booleans() | st.builds(
    lambda word, upper, pad: pad + (word.upper() if upper else word) + pad,
    st.sampled_from(FLAG_WORDS),
    st.booleans(),
    st.sampled_from(["", " "]),
)
# Printable ASCII, as an Authorization header needs; never the bare redaction marker.
GOOD_KEY = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40).filter(
    lambda k: k != "***"
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
KNOWN = ["enabled", "api_url", "api_key", "preferred_agent", "priority"]


@given(
    url=st.none() | st.just("") | GOOD_URL,
    enabled=st.none() | GOOD_FLAG,
    key=st.none() | st.just("") | GOOD_KEY,
    agent=st.none() | st.text(max_size=20),
    priority=st.none() | st.sampled_from(["normal", "high", "low"]),
    extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in KNOWN), JSON, max_size=3),
)
def test_good_sections_pass_and_resolve_to_a_callable_url(
    url: str | None,
    enabled: bool | str | None,
    key: str | None,
    agent: str | None,
    priority: str | None,
    extra: dict[str, Any],
) -> None:
    hive: dict[str, Any] = {**extra, "api_url": url, "api_key": key, "preferred_agent": agent, "priority": priority}
    if enabled is not None:  # null is refused: stored on create, it would silently mean "off"
        hive["enabled"] = enabled
    config = {"hive": hive, "other_plugin": {"anything": [1, 2]}}
    assert validate_config(config) == []
    assert plugin.omni_validate_tenant_config(config=config) is None
    # Sound: what passes is what call_hive can actually post to.
    target = resolve_target(config, enabled=True, api_url="http://global", api_key=None, timeout=1.0)
    if target is not None:
        parsed = httpx.URL(target.process_url)
        assert parsed.scheme in ("http", "https") and parsed.host and parsed.path.endswith("/process")
        if key and key.strip():
            assert target.api_key == key.strip()


@given(st.dictionaries(st.sampled_from(KNOWN) | st.text(max_size=8), JSON, max_size=6) | JSON)
def test_any_json_gives_named_problems_or_a_usable_target(section: Any) -> None:
    """Whatever JSON is stored, the validator never raises, each problem names a key of the section,
    and a section it accepts never makes call_hive fail on the URL."""
    config = {"hive": section}
    problems = validate_config(config)
    assert all(isinstance(p, str) and p.startswith("hive") for p in problems)
    if not problems:
        target = resolve_target(config, enabled=True, api_url="http://global", api_key=None, timeout=1.0)
        if target is not None:
            parsed = httpx.URL(target.process_url)
            assert parsed.scheme in ("http", "https") and parsed.host


BAD_URL = st.one_of(
    st.builds("{}://{}".format, st.sampled_from(["ftp", "file", "ws", "javascript", ""]), HOST),
    HOST,  # no scheme
    st.sampled_from(["http://", "https:///path", "http://:80", "http://[::1", "http://h:99999", "http://h:port"]),
    st.builds("http://{}/{}".format, HOST, st.sampled_from([" x", "a\tb", "\x00", "a\nb"])),
    st.builds("https://{}/{}{}".format, HOST, st.sampled_from(["?", "#", "x?a=1", "x#frag"]), st.text(max_size=5)),
)


@given(url=BAD_URL, token=st.from_regex(r"\A[A-Za-z0-9]{12}\Z"))
def test_bad_api_url_is_named_and_not_echoed(url: str, token: str) -> None:
    problems = validate_config({"hive": {"api_url": f"{url}/{token}", "enabled": True}})
    assert len(problems) == 1 and problems[0].startswith("hive.api_url "), problems
    assert token not in problems[0]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"enabled": None}, "hive.enabled"),
        ({"enabled": "maybe"}, "hive.enabled"),
        ({"enabled": 1}, "hive.enabled"),
        ({"api_url": 8080}, "hive.api_url"),
        ({"api_url": ["http://h"]}, "hive.api_url"),
        ({"api_key": 12345}, "hive.api_key"),
        ({"api_key": " *** "}, "hive.api_key"),
        ({"preferred_agent": {"id": 1}}, "hive.preferred_agent"),
        ({"priority": 3}, "hive.priority"),
    ],
)
def test_bad_values_are_named(section: dict[str, Any], key: str) -> None:
    problems = validate_config({"hive": section})
    assert len(problems) == 1 and problems[0].startswith(key + " "), problems


@given(secret=st.from_regex(r"\A[a-z]{10}\Z"), bad=st.sampled_from(["\u00e9", "\n", "\x7f", "\u2028"]))
def test_bad_api_key_is_not_echoed(secret: str, bad: str) -> None:
    problems = validate_config({"hive": {"api_key": secret + bad + secret}})
    assert len(problems) == 1 and problems[0].startswith("hive.api_key ")
    assert secret not in problems[0]


@given(section=st.integers() | st.text() | st.lists(st.integers()) | st.booleans())
def test_section_must_be_an_object(section: Any) -> None:
    assert validate_config({"hive": section}) == [f"hive must be an object, got {_json_type(section)}"]


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", str: "string", list: "array"}[type(value)]


def test_every_problem_is_reported_and_other_sections_are_ignored() -> None:
    config = {
        "hive": {"enabled": "perhaps", "api_url": "hive.local", "api_key": 1, "priority": []},
        "slack": {"api_url": "nonsense"},
        "history_retention_days": "x",
    }
    assert [p.split(" ", 1)[0] for p in validate_config(config)] == [
        "hive.enabled",
        "hive.api_url",
        "hive.api_key",
        "hive.priority",
    ]
    assert validate_config({}) == [] and validate_config({"hive": None}) == []
