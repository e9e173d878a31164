"""The shared outbound client: transport choice and no cookies shared across tenants."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_core.config import ConfigError, Settings, load_settings
from omni_core.http_client import HttpxPinningTransport, HubClient, make_http_client
from omni_core.http_transport import CONNECT_ADDRESSES, PooledTransport


async def _recording_server(answer: bytes) -> tuple[asyncio.Server, str, list[bytes]]:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            heads.append(head)
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            if length:
                await reader.readexactly(length)
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads


#: Every answer sets a cookie: none may come back on a later request.
COOKIE_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: session=tenant-a; Path=/\r\n\r\nok"


@pytest.mark.parametrize("transport", ["pooled", "httpx"])
async def test_no_cookie_from_one_request_rides_on_the_next(transport: str) -> None:
    server, url, heads = await _recording_server(COOKIE_ANSWER)
    client = make_http_client(Settings(http_transport=transport))
    try:
        first = await client.get(url + "/tenant-a")
        assert first.headers["set-cookie"].startswith("session=")
        await client.get(url + "/tenant-b")
        assert len(heads) == 2
        assert b"cookie:" not in heads[1].lower()
        assert len(client.cookies.jar) == 0
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


def test_pooled_transport_is_the_default_without_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = make_http_client(Settings())
    assert isinstance(client._transport, PooledTransport)
    assert not client._mounts


def test_the_pool_keeps_an_idle_connection_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for workers, idle in ((0, 32), (50, 50), (80, 80), (1000, 100)):
        transport = make_http_client(Settings(workers=workers))._transport
        assert isinstance(transport, PooledTransport)
        assert (transport._max_idle, transport._max_connections) == (idle, 100)


def test_a_proxy_in_the_environment_selects_httpx_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    client = make_http_client(Settings())
    assert isinstance(client._transport, HttpxPinningTransport)  # httpx's own, able to pin
    # httpx routes https:// through the proxy it read from the environment.
    assert [pattern.pattern for pattern in client._mounts] == ["https://"]


def test_transport_setting_is_validated() -> None:
    assert load_settings({"OMNI_HTTP_TRANSPORT": "HTTPX"}).http_transport == "httpx"
    with pytest.raises(ConfigError, match="OMNI_HTTP_TRANSPORT"):
        load_settings({"OMNI_HTTP_TRANSPORT": "curl"})


async def test_parsed_urls_are_reused_and_each_request_keeps_its_own() -> None:
    server, base, heads = await _recording_server(COOKIE_ANSWER)
    client = make_http_client(Settings())
    try:
        for path in ("/a?x=1", "/b", "/a?x=1", "/message/sendText/inst%201"):
            response = await client.post(base + path, content=b"{}")
            assert response.status_code == 200
        targets = [head.split(b" ", 2)[1] for head in heads]
        assert targets == [b"/a?x=1", b"/b", b"/a?x=1", b"/message/sendText/inst%201"]
        assert len(client._urls) == 3  # type: ignore[attr-defined]
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_the_fast_send_path_behaves_like_httpx() -> None:
    redirect = b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 5\r\n\r\nmoved"
    server, url, heads = await _recording_server(redirect)
    client = make_http_client(Settings())
    hooked: list[str] = []
    try:
        response = await client.post(url + "/send", content=b'{"a":1}', headers={"x-k": "v"})
        # Not followed (the client default), but described as httpx does.
        assert response.status_code == 302 and response.content == b"moved"
        assert response.next_request is not None and str(response.next_request.url) == url + "/elsewhere"
        assert response.elapsed.total_seconds() >= 0 and response.is_closed
        assert response.request.extensions["timeout"] == {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}
        assert b"x-k: v" in heads[0].lower() and b"user-agent: omni-hub/0.1" in heads[0].lower()

        # Credentials in the URL: httpx's path, with basic auth.
        await client.get(url.replace("http://", "http://user:pw@") + "/auth")
        assert b"authorization: basic dxnlcjpwdw==" in heads[1].lower()

        # Event hooks and streaming keep working (httpx's path).
        async def on_request(request: httpx.Request) -> None:
            hooked.append(request.url.path)

        client.event_hooks = {"request": [on_request], "response": []}
        await client.get(url + "/hooked")
        assert hooked == ["/hooked"]
        client.event_hooks = {"request": [], "response": []}
        async with client.stream("GET", url + "/streamed") as streamed:
            assert await streamed.aread() == b"moved"
        # Redirects followed on request.
        followed = await client.get(url + "/loop", follow_redirects=False)
        assert followed.status_code == 302
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get(url + "/after-close")


async def test_fast_path_bodies_read_like_httpx_plain_empty_and_gzip() -> None:
    import gzip

    packed = gzip.compress(b'{"reply":"ol\\u00e1"}')
    answers = [
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}',
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed),
    ]
    index = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal index
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            writer.write(answers[index])
            index += 1
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = make_http_client(Settings())
    try:
        plain = await client.get(url)
        assert plain.json() == {"ok": True} and plain.num_bytes_downloaded == 12
        assert plain.is_stream_consumed and plain.is_closed and await plain.aread() == b'{"ok": true}'
        empty = await client.get(url)
        assert empty.status_code == 204 and empty.content == b"" and empty.is_closed
        zipped = await client.get(url)
        assert zipped.json() == {"reply": "olá"} and zipped.num_bytes_downloaded == len(packed)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


_header_names = st.sampled_from(
    # Both spellings of the client's default names: a given name replaces the default whatever its case.
    [
        *("Content-Type", "Authorization", "User-Agent", "user-agent", "Accept", "ACCEPT", "accept-encoding"),
        *("Host", "Content-Length", "Transfer-Encoding", "X-Trace", "x-trace"),
    ]
)
_header_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 /;=-", min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "put", "PATCH", "DELETE", "HEAD"]),
    url=st.sampled_from(["http://127.0.0.1:8080/process", "https://api.example.test/x?y=1", "http://h/"]),
    content=st.one_of(st.none(), st.binary(max_size=40)),
    headers=st.one_of(st.none(), st.dictionaries(_header_names, _header_values, max_size=5)),
    timeout=st.one_of(st.just(httpx.USE_CLIENT_DEFAULT), st.floats(min_value=0.1, max_value=60), st.none()),
    extensions=st.sampled_from(
        [None, {}, {CONNECT_ADDRESSES: ("127.0.0.1", "::1")}, {"timeout": {"connect": 1.0, "read": 2.0}, "x": 1}]
    ),
)
def test_the_fast_request_builder_builds_what_httpx_builds(
    method: str,
    url: str,
    content: bytes | None,
    headers: dict[str, str] | None,
    timeout: Any,
    extensions: dict[str, Any] | None,
) -> None:
    client = make_http_client(Settings())
    kwargs: dict[str, Any] = {"content": content, "headers": headers, "timeout": timeout, "extensions": extensions}
    fast = client.build_request(method, url, **kwargs)
    slow = httpx.AsyncClient.build_request(client, method, url, **kwargs)
    assert fast.method == slow.method
    assert fast.url == slow.url
    assert fast.headers.raw == slow.headers.raw
    assert fast.content == slow.content
    assert fast.extensions == slow.extensions
    again = client.build_request(method, url, content=content, timeout=timeout)
    assert fast.extensions["timeout"] is not again.extensions["timeout"]  # never shared between requests


def test_header_values_outside_ascii_fail_as_in_httpx_and_bytes_pass_through() -> None:
    client = make_http_client(Settings())
    for bad in ({"X-Name": "olá"}, {"Nöme": "x"}):
        with pytest.raises(UnicodeEncodeError):
            httpx.AsyncClient.build_request(client, "POST", "http://h/p", headers=bad)
        with pytest.raises(UnicodeEncodeError):
            client.build_request("POST", "http://h/p", headers=bad)
    raw: dict[Any, Any] = {b"X-Raw": "ol\xc3\xa1".encode("latin-1"), "User-Agent": b"agent/1"}
    fast = client.build_request("POST", "http://h/p", headers=raw, content=b"{}")
    slow = httpx.AsyncClient.build_request(client, "POST", "http://h/p", headers=raw, content=b"{}")
    assert fast.headers.raw == slow.headers.raw


def test_other_request_shapes_take_httpx_own_builder() -> None:
    client = make_http_client(Settings())
    for kwargs in ({"json": {"a": 1}}, {"params": {"q": "1"}}, {"data": {"a": "b"}}, {"content": "text"}):
        fast = client.build_request("POST", "http://h/p", **kwargs)
        slow = httpx.AsyncClient.build_request(client, "POST", "http://h/p", **kwargs)
        assert (fast.url, fast.headers.raw, fast.content) == (slow.url, slow.headers.raw, slow.content)


# -- pinned requests (CONNECT_ADDRESSES) -----------------------------------------------------------

#: Never resolves (RFC 6761): a request to it that arrives cannot have looked it up.
MADE_UP = "receiver.omni-test.invalid"


@pytest.mark.parametrize("transport", ["pooled", "httpx"])
async def test_a_pinned_request_goes_to_its_address_on_either_transport(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server, _, heads = await _recording_server(COOKIE_ANSWER)
    port = server.sockets[0].getsockname()[1]
    client = make_http_client(Settings(http_transport=transport))
    try:
        target = f"http://{MADE_UP}:{port}/hook"
        response = await client.post(target, content=b"{}", extensions={CONNECT_ADDRESSES: ("127.0.0.1",)})
        assert response.status_code == 200 and str(response.request.url) == target
        assert (
            heads[0].startswith(b"POST /hook HTTP/1.1\r\n") and f"host: {MADE_UP}:{port}".encode() in heads[0].lower()
        )
        # Refused on .2 (the server is bound to .1 only), then the next address.
        response = await client.post(target, content=b"{}", extensions={CONNECT_ADDRESSES: ("127.0.0.2", "127.0.0.1")})
        assert response.status_code == 200 and len(heads) == 2
        with pytest.raises(httpx.ConnectError):
            await client.post(target, content=b"{}", extensions={CONNECT_ADDRESSES: ("127.0.0.3",)})
        with pytest.raises(httpx.ConnectError):
            await client.post(target, content=b"{}")  # unpinned: the name is looked up, and resolves nowhere
        assert len(heads) == 2
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_a_pinned_request_never_follows_a_redirect() -> None:
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/x\r\nContent-Length: 0\r\n\r\n"
    server, url, heads = await _recording_server(redirect)
    client = make_http_client(Settings())
    pin = {CONNECT_ADDRESSES: ("127.0.0.1",)}
    try:
        with pytest.raises(ValueError, match="must not follow redirects"):
            await client.get(url + "/hook", extensions=pin, follow_redirects=True)
        assert heads == []
        response = await client.get(url + "/hook", extensions=pin)
        assert response.status_code == 302 and response.request.extensions[CONNECT_ADDRESSES] == ("127.0.0.1",)
        # Sending next_request by hand would not carry the pin to a host nobody checked.
        assert response.next_request is not None and CONNECT_ADDRESSES not in response.next_request.extensions
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_a_transport_that_cannot_pin_refuses_a_pinned_request() -> None:
    server, url, heads = await _recording_server(COOKIE_ANSWER)
    client = HubClient()  # httpx's plain transport: it would resolve the name again
    try:
        with pytest.raises(ValueError, match="cannot honour"):
            await client.get(url, extensions={CONNECT_ADDRESSES: ("127.0.0.1",)})
        assert heads == []
        assert (await client.get(url)).status_code == 200  # unpinned requests are its business as usual
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
