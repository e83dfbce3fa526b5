"""Proxies: settings (parse, validate, select) and real calls through pproxy.

The first half is sans-I/O. The second half starts real proxy processes
(``chatkit.testing.start_pproxy``) and proves from their logs which route
each call took, through the async client and the sync one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import chatkit
from chatkit import APIConnectionError, ProxyConfigError, ProxyError, RetryPolicy
from chatkit._proxy import PROXY_SCHEMES, ProxySettings, ProxyURL
from chatkit._transport import RedactedCause
from chatkit.providers import OpenAI
from chatkit.testing import FakeOpenAIServer, ProxyServer, start_pproxy

PASSWORD = "pw-9f3c@:/%x"
ENCODED = "pw-9f3c%40%3A%2F%25x"


def url(scheme: str, password: str = ENCODED, host: str = "proxy.example", port: int = 3128) -> str:
    return f"{scheme}://alice:{password}@{host}:{port}"


# -- ProxyURL ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(PROXY_SCHEMES))
def test_every_scheme_parses_with_credentials(scheme: str) -> None:
    parsed = ProxyURL.parse(url(scheme), "proxy")
    assert parsed.scheme == scheme
    assert parsed.username == "alice"
    assert parsed.password == PASSWORD
    assert parsed.is_socks is scheme.startswith("socks")
    assert parsed.without_credentials == f"{scheme}://proxy.example:3128"
    for text in (str(parsed), repr(parsed)):
        assert PASSWORD not in text and ENCODED not in text and "alice" not in text


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("ftp://proxy:21", "needs a scheme"),
        ("proxy.example:3128", "needs a scheme"),
        ("http://", "needs a scheme"),
        ("http://proxy:99999", "malformed"),
        ("http://proxy:port", "malformed"),
        ("http://proxy:3128/some/path", "must not have a path"),
        ("http://proxy:3128/?x=1", "must not have a path"),
        ("", "must be a proxy URL string"),
        (42, "must be a proxy URL string"),
    ],
)
def test_bad_proxy_urls_are_rejected_before_io(value: object, needle: str) -> None:
    with pytest.raises(ProxyConfigError, match=needle) as caught:
        ProxyURL.parse(value, "proxy")
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "proxy"


def test_rejection_messages_hide_the_password() -> None:
    for bad in (f"ftp://alice:{ENCODED}@proxy:21", f"http://alice:{ENCODED}@proxy:bad"):
        with pytest.raises(ProxyConfigError) as caught:
            ProxyURL.parse(bad, "proxy")
        assert ENCODED not in str(caught.value) and PASSWORD not in str(caught.value)


def test_trailing_slash_and_whitespace_are_fine() -> None:
    assert ProxyURL.parse(" http://proxy:3128/ ", "proxy").without_credentials == (
        "http://proxy:3128"
    )


def test_ipv6_proxy_host_keeps_its_brackets() -> None:
    assert ProxyURL.parse("socks5://[::1]:1080", "proxy").without_credentials == (
        "socks5://[::1]:1080"
    )


@pytest.mark.parametrize(
    ("scheme", "version", "remote_dns"),
    [("socks4", 4, False), ("socks4a", 4, True), ("socks5", 5, False), ("socks5h", 5, True)],
)
def test_socks_options_follow_the_scheme(scheme: str, version: int, remote_dns: bool) -> None:
    options = ProxyURL.parse(url(scheme), "proxy").socks_options()
    assert options.version == version
    assert options.remote_dns is remote_dns
    assert (options.host, options.port, options.username) == ("proxy.example", 3128, "alice")
    # SOCKS4 has no password field: only the user id is sent.
    assert options.password == (None if version == 4 else PASSWORD)


def test_socks_port_defaults_to_1080() -> None:
    assert ProxyURL.parse("socks5h://proxy.example", "proxy").socks_options().port == 1080


@pytest.mark.parametrize("bad", ["p%C3%BCw", "x" * 256])
def test_socks_credentials_must_be_short_ascii(bad: str) -> None:
    with pytest.raises(ProxyConfigError, match="ASCII"):
        ProxyURL.parse(f"socks5://alice:{bad}@proxy:1080", "proxy")
    # HTTP proxies send Basic auth and take any text.
    assert ProxyURL.parse(f"http://alice:{bad}@proxy:1080", "proxy").password


def test_secrets_cover_every_form_a_password_travels_in() -> None:
    secrets = ProxyURL.parse(url("http"), "proxy").secrets()
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert {PASSWORD, ENCODED, basic} <= set(secrets)
    assert ProxyURL.parse("http://alice@proxy:1", "proxy").secrets() == ()


def test_secrets_of_a_password_latin1_cannot_encode() -> None:
    secrets = ProxyURL.parse("http://alice:%E2%82%AC@proxy:1", "proxy").secrets()
    assert "\u20ac" in secrets
    assert base64.b64encode("alice:\u20ac".encode()).decode() in secrets


# -- ProxySettings -------------------------------------------------------------


def test_one_proxy_serves_every_scheme() -> None:
    settings = ProxySettings.create(proxy=url("socks5h"))
    for target in ("http://api.example/v1", "https://api.example/v1"):
        chosen = settings.for_url(target)
        assert chosen is not None and chosen.scheme == "socks5h"
    assert settings.explicit


def test_proxies_are_chosen_by_the_target_scheme() -> None:
    settings = ProxySettings.create(
        proxies={"http": url("http", port=1), "https": url("socks5", port=2)}
    )
    http, https = settings.for_url("http://a/v1"), settings.for_url("https://a/v1")
    assert http is not None and http.socks_options().port == 1
    assert https is not None and https.scheme == "socks5"


def test_all_is_the_fallback_and_a_scheme_entry_wins_over_it() -> None:
    settings = ProxySettings.create(proxies={"all": url("socks5", port=1), "https": url("http")})
    chosen_http, chosen_https = settings.for_url("http://a"), settings.for_url("https://a")
    assert chosen_http is not None and chosen_http.scheme == "socks5"
    assert chosen_https is not None and chosen_https.scheme == "http"


def test_missing_scheme_entry_refuses_to_connect_directly() -> None:
    settings = ProxySettings.create(proxies={"http": url("http")})
    with pytest.raises(ProxyConfigError) as caught:
        settings.for_url("https://api.example/v1")
    message = str(caught.value)
    assert "no entry for 'https'" in message and "refusing to connect" in message
    assert "https://api.example/v1" in message
    assert PASSWORD not in message and ENCODED not in message


def test_a_scheme_mapped_to_none_goes_direct_on_purpose() -> None:
    settings = ProxySettings.create(proxies={"https": url("http"), "http": None})
    assert settings.for_url("http://localhost:8000") is None
    assert "'http': None" in repr(settings)


def test_httpx_style_keys_are_accepted() -> None:
    settings = ProxySettings.create(proxies={"https://": url("http")})
    assert settings.for_url("https://a") is not None


def test_a_string_for_proxies_means_one_proxy_for_all() -> None:
    settings = ProxySettings.create(proxies=url("socks5"))
    chosen = settings.for_url("http://a")
    assert chosen is not None and chosen.scheme == "socks5"
    with pytest.raises(ProxyConfigError) as caught:
        ProxySettings.create(proxies="ftp://x:1")
    assert caught.value.field == "proxies"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"proxy": "http://a:1", "proxies": {"all": "http://a:1"}}, "not both"),
        ({"proxies": {}}, "non-empty dict"),
        ({"proxies": ["http://a:1"]}, "non-empty dict"),
        ({"proxies": {"ftp": "http://a:1"}}, "unknown key 'ftp'"),
        ({"proxies": {1: "http://a:1"}}, "unknown key 1"),
        ({"proxies": {"https": "gopher://a:1"}}, "needs a scheme"),
        ({"trust_env": "yes"}, "trust_env"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ProxyConfigError, match=needle):
        ProxySettings.create(**kwargs)


def test_settings_repr_hides_passwords_and_secrets_collects_them() -> None:
    settings = ProxySettings.create(proxies={"http": url("http"), "https": url("socks5")})
    assert PASSWORD not in repr(settings) and ENCODED not in repr(settings)
    assert PASSWORD in settings.secrets()
    single = ProxySettings.create(proxy=url("socks5h"))
    assert PASSWORD not in repr(single) and PASSWORD in single.secrets()
    assert ProxySettings().secrets() == ()


# -- the environment -----------------------------------------------------------


def test_env_proxies_follow_the_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://plain.proxy:3128")
    monkeypatch.setenv("HTTPS_PROXY", f"socks5h://alice:{ENCODED}@secure.proxy:1080")
    settings = ProxySettings()
    http, https = settings.for_url("http://a/v1"), settings.for_url("https://a/v1")
    assert http is not None and http.without_credentials == "http://plain.proxy:3128"
    assert https is not None and https.password == PASSWORD
    assert not settings.explicit


def test_all_proxy_is_the_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://all.proxy:1080")
    chosen = ProxySettings().for_url("https://a")
    assert chosen is not None and chosen.scheme == "socks5"


def test_lowercase_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://upper:1")
    monkeypatch.setenv("https_proxy", "http://lower:1")
    chosen = ProxySettings().for_url("https://a")
    assert chosen is not None and chosen.without_credentials == "http://lower:1"


def test_a_bare_host_port_in_env_is_an_http_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "corp.proxy:8080")
    chosen = ProxySettings().for_url("https://a")
    assert chosen is not None and chosen.without_credentials == "http://corp.proxy:8080"


def test_a_broken_env_proxy_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "gopher://x:1")
    with pytest.raises(ProxyConfigError, match="ALL_PROXY environment variable"):
        ProxySettings().for_url("http://a")


def test_trust_env_false_and_explicit_settings_ignore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "http://env.proxy:1")
    assert ProxySettings(trust_env=False).for_url("http://a") is None
    explicit = ProxySettings.create(proxy="socks5://mine:1").for_url("http://a")
    assert explicit is not None and explicit.without_credentials == "socks5://mine:1"


def test_no_env_means_direct() -> None:
    assert ProxySettings().for_url("https://api.example") is None


@pytest.mark.parametrize(
    ("no_proxy", "target", "bypassed"),
    [
        ("*", "https://anything.example", True),
        ("example.com", "https://example.com/v1", True),
        ("example.com", "https://api.example.com/v1", True),
        (".example.com", "https://api.example.com/v1", True),
        ("example.com", "https://notexample.com/v1", False),
        ("other.org, example.com", "https://EXAMPLE.com", True),
        ("127.0.0.1", "http://127.0.0.1:8000/v1", True),
        ("10.0.0.0/8", "http://10.1.2.3/v1", True),
        ("10.0.0.0/8", "http://11.1.2.3/v1", False),
        ("10.0.0.0/8", "http://ten.example/v1", False),
        ("localhost:8000", "http://localhost:8000/v1", True),
        ("localhost:8000", "http://localhost:9000/v1", False),
        ("::1", "http://[::1]:8000/v1", True),
        ("[::1]:8000", "http://[::1]:8000/v1", True),
        ("not-an-ip", "http://127.0.0.1/v1", False),
        (" , ", "http://a.example/v1", False),
    ],
)
def test_no_proxy(
    monkeypatch: pytest.MonkeyPatch, no_proxy: str, target: str, bypassed: bool
) -> None:
    monkeypatch.setenv("ALL_PROXY", "http://env.proxy:1")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert (ProxySettings().for_url(target) is None) is bypassed


# -- real proxies: pproxy processes on 127.0.0.1 -------------------------------
#
# Each test runs against its own fake server (in a thread, so that the sync
# client can block) and proves the route from the proxy's own log: a proxied
# call adds exactly one logged connection to the server's port, a direct one
# adds none.

HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = "Hello! How can I help you today?"
API_KEY = "sk-test-0123456789abcdef"
WRONG = "wrong-5e1d@x"
SECRETS = (
    PASSWORD,
    ENCODED,
    base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
    WRONG,
    quote(WRONG, safe=""),
    base64.b64encode(f"alice:{WRONG}".encode()).decode(),
    API_KEY,
)


@pytest.fixture(scope="module")
def socks5() -> Iterator[ProxyServer]:
    with start_pproxy("socks5", username="alice", password=PASSWORD) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def http_proxy() -> Iterator[ProxyServer]:
    with start_pproxy("http", username="alice", password=PASSWORD) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def socks4() -> Iterator[ProxyServer]:
    with start_pproxy("socks4", username="alice") as proxy:
        yield proxy


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=API_KEY).run_in_thread() as running:
        yield running


@pytest.fixture(params=["async", "sync"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Route:
    """Counts what one proxy logged for one target port, from a starting point."""

    def __init__(self, proxy: ProxyServer, port: int, host: str | None = None) -> None:
        self.proxy, self.port, self.host = proxy, port, host
        self.before = len(proxy.connections_to(port, host))

    def went_through(self, n: int = 1) -> bool:
        return self.proxy.wait_for_connections(self.before + n, port=self.port, host=self.host)

    def added(self) -> int:
        return len(self.proxy.connections_to(self.port, self.host)) - self.before


def chat(mode: str, *, stream: bool, call: dict[str, Any] | None = None, **client: Any) -> str:
    """One call through the async or the sync client; returns the answer's text."""
    call = call or {}
    if mode == "async":

        async def run() -> str:
            async with chatkit.AsyncClient(**client) as made:
                if stream:
                    parts = []
                    async for chunk in made.chat.completions.create(
                        messages=HELLO, stream=True, **call
                    ):
                        parts.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
                    return "".join(parts)
                reply = await made.chat.completions.create(messages=HELLO, **call)
                return str(reply.choices[0].message.content)

        return asyncio.run(run())
    with chatkit.Client(**client) as made:
        if stream:
            return "".join(
                chunk.choices[0].delta.content or "" if chunk.choices else ""
                for chunk in made.chat.completions.create(messages=HELLO, stream=True, **call)
            )
        reply = made.chat.completions.create(messages=HELLO, **call)
        return str(reply.choices[0].message.content)


def provider_for(server: FakeOpenAIServer, **kwargs: Any) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=API_KEY, **kwargs)


def all_text(error: BaseException) -> str:
    """Everything a user could print about an error: traceback, chain, notes."""
    parts = ["".join(traceback.format_exception(error))]
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current), *getattr(current, "__notes__", [])]
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return "\n".join(parts)


def assert_secret_free(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked: ...{text[:300]}"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_socks5_with_auth_carries_the_call(
    mode: str, stream: bool, socks5: ProxyServer, server: FakeOpenAIServer
) -> None:
    route = Route(socks5, server.port)
    text = chat(mode, stream=stream, provider=provider_for(server), proxy=socks5.url)
    assert text == ANSWER
    assert route.went_through() and route.added() == 1
    assert len(server.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_http_proxy_with_auth_carries_the_call(
    mode: str, stream: bool, http_proxy: ProxyServer, server: FakeOpenAIServer
) -> None:
    route = Route(http_proxy, server.port)
    text = chat(mode, stream=stream, provider=provider_for(server), proxy=http_proxy.url)
    assert text == ANSWER
    assert route.went_through() and route.added() == 1
    # Forwarded by the proxy, not sent by chatkit with the proxy's credentials.
    assert "proxy-authorization" not in server.requests[0].headers


def test_socks4_with_a_user_id_carries_the_call(
    mode: str, socks4: ProxyServer, server: FakeOpenAIServer
) -> None:
    route = Route(socks4, server.port)
    assert chat(mode, stream=True, provider=provider_for(server), proxy=socks4.url) == ANSWER
    assert route.went_through()


def test_socks4_rejects_an_unknown_user_id(socks4: ProxyServer, server: FakeOpenAIServer) -> None:
    before = socks4.rejections
    with pytest.raises(ProxyError):
        chat(
            "async",
            stream=False,
            provider=provider_for(server),
            proxy=socks4.proxy_url(username="mallory"),
            max_retries=0,
        )
    assert socks4.wait_for_rejections(before + 1)
    assert server.requests == []


@pytest.mark.parametrize(
    ("scheme", "logged_host"), [("socks5h", "localhost"), ("socks5", "127.0.0.1")]
)
def test_socks5h_lets_the_proxy_resolve_names(
    scheme: str, logged_host: str, socks5: ProxyServer, server: FakeOpenAIServer
) -> None:
    route = Route(socks5, server.port, logged_host)
    provider = OpenAI(base_url=f"http://localhost:{server.port}/v1", api_key=API_KEY)
    assert chat("async", stream=False, provider=provider, proxy=socks5.proxy_url(scheme))
    assert route.went_through()


def test_proxies_dict_is_chosen_by_target_scheme(
    mode: str, socks5: ProxyServer, http_proxy: ProxyServer, server: FakeOpenAIServer
) -> None:
    via_socks, via_http = Route(socks5, server.port), Route(http_proxy, server.port)
    proxies = {"http": socks5.url, "https": http_proxy.url}
    assert chat(mode, stream=True, provider=provider_for(server), proxies=proxies) == ANSWER
    assert via_socks.went_through()
    assert via_http.added() == 0


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_proxies_dict_without_the_scheme_never_connects_directly(
    mode: str, stream: bool, http_proxy: ProxyServer, server: FakeOpenAIServer
) -> None:
    route = Route(http_proxy, server.port)
    with pytest.raises(ProxyConfigError, match="no entry for 'http'") as caught:
        chat(mode, stream=stream, provider=provider_for(server), proxies={"https": http_proxy.url})
    assert server.requests == []
    assert route.added() == 0
    assert_secret_free(all_text(caught.value))


def test_provider_proxy_overrides_the_clients(
    mode: str, socks5: ProxyServer, http_proxy: ProxyServer, server: FakeOpenAIServer
) -> None:
    via_socks, via_http = Route(socks5, server.port), Route(http_proxy, server.port)
    provider = provider_for(server, proxy=socks5.url)
    assert chat(mode, stream=True, provider=provider, proxy=http_proxy.url) == ANSWER
    assert via_socks.went_through()
    assert via_http.added() == 0


def test_call_proxy_overrides_the_clients(
    mode: str, socks4: ProxyServer, http_proxy: ProxyServer, server: FakeOpenAIServer
) -> None:
    via_socks4, via_http = Route(socks4, server.port), Route(http_proxy, server.port)
    text = chat(
        mode,
        stream=False,
        provider=provider_for(server),
        proxy=http_proxy.url,
        call={"proxy": socks4.url},
    )
    assert text == ANSWER
    assert via_socks4.went_through()
    assert via_http.added() == 0


def test_provider_proxy_wins_over_the_call_proxy(
    mode: str, socks5: ProxyServer, socks4: ProxyServer, server: FakeOpenAIServer
) -> None:
    # A provider's own proxy is about its destination (the local model relies
    # on it to stay off proxies), so a call's proxy= does not replace it.
    via_socks5, via_socks4 = Route(socks5, server.port), Route(socks4, server.port)
    provider = provider_for(server, proxy=socks5.url)
    assert chat(mode, stream=True, provider=provider, call={"proxy": socks4.url}) == ANSWER
    assert via_socks5.went_through()
    assert via_socks4.added() == 0


# -- the environment, for real -------------------------------------------------


def test_http_proxy_env_is_honoured(
    mode: str, monkeypatch: pytest.MonkeyPatch, http_proxy: ProxyServer, server: FakeOpenAIServer
) -> None:
    monkeypatch.setenv("HTTP_PROXY", http_proxy.url)
    route = Route(http_proxy, server.port)
    assert chat(mode, stream=True, provider=provider_for(server)) == ANSWER
    assert route.went_through()


def test_all_proxy_env_may_be_socks(
    monkeypatch: pytest.MonkeyPatch, socks5: ProxyServer, server: FakeOpenAIServer
) -> None:
    monkeypatch.setenv("ALL_PROXY", socks5.url)
    route = Route(socks5, server.port)
    assert chat("async", stream=False, provider=provider_for(server)) == ANSWER
    assert route.went_through()


def test_no_proxy_env_bypasses_the_proxy(
    mode: str, monkeypatch: pytest.MonkeyPatch, socks5: ProxyServer, server: FakeOpenAIServer
) -> None:
    monkeypatch.setenv("ALL_PROXY", socks5.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    route = Route(socks5, server.port)
    assert chat(mode, stream=True, provider=provider_for(server)) == ANSWER
    assert len(server.requests) == 1
    assert route.added() == 0


def test_trust_env_false_ignores_env_proxies(
    mode: str, monkeypatch: pytest.MonkeyPatch, http_proxy: ProxyServer, server: FakeOpenAIServer
) -> None:
    monkeypatch.setenv("HTTP_PROXY", http_proxy.url)
    route = Route(http_proxy, server.port)
    text = chat(mode, stream=False, provider=provider_for(server), trust_env=False)
    assert text == ANSWER
    assert len(server.requests) == 1
    assert route.added() == 0


# -- failures: ProxyError, retryable, and no secret anywhere -------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("kind", ["http", "socks5"])
def test_wrong_credentials_raise_a_retryable_proxy_error(
    mode: str,
    kind: str,
    socks5: ProxyServer,
    http_proxy: ProxyServer,
    server: FakeOpenAIServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = socks5 if kind == "socks5" else http_proxy
    before = proxy.rejections
    client: dict[str, Any] = {"provider": provider_for(server), "max_retries": 1}
    with pytest.raises(ProxyError) as caught:
        chat(mode, stream=True, proxy=proxy.proxy_url(password=WRONG), **client)
    error = caught.value
    assert isinstance(error, APIConnectionError)
    assert RetryPolicy().decide(error) == "retry"
    # Retried once: the proxy turned both attempts away.
    assert proxy.wait_for_rejections(before + 2)
    assert "password" in str(error)
    assert server.requests == []
    assert_secret_free(all_text(error))
    assert "ProxyError" in caplog.text  # the attempts were logged, without secrets
    assert_secret_free(caplog.text)
    assert_secret_free("\n".join(repr(r.args) + r.getMessage() for r in caplog.records))


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_unreachable_proxy_raises_proxy_error(
    mode: str, scheme: str, server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"{scheme}://alice:{ENCODED}@127.0.0.1:{_free_port()}"
    with pytest.raises(ProxyError) as caught:
        chat(mode, stream=False, provider=provider_for(server), proxy=dead, max_retries=0)
    assert isinstance(caught.value, APIConnectionError)
    assert f"{scheme}://127.0.0.1:" in str(caught.value)
    assert server.requests == []
    assert_secret_free(all_text(caught.value))
    assert_secret_free(caplog.text)


def test_reprs_hide_credentials(socks5: ProxyServer, http_proxy: ProxyServer) -> None:
    provider = OpenAI(base_url="http://127.0.0.1:1/v1", api_key=API_KEY, proxy=socks5.url)
    client = chatkit.AsyncClient(provider=provider, proxies={"https": http_proxy.url})
    texts = [repr(client), str(client), repr(provider), repr(provider.proxy_settings)]
    with chatkit.Client(provider=provider, proxy=socks5.url) as made:
        texts.append(repr(made))
    assert_secret_free("\n".join(texts))
    assert "127.0.0.1" in repr(client)


# -- HTTP CONNECT: an https target behind the HTTP proxy -----------------------


class TLSFront:
    """Terminates TLS on 127.0.0.1 and pipes the bytes to the fake server.

    aiohttp only tunnels with CONNECT to https targets, so this stands in
    front of the plain-HTTP fake server with a certificate from a test CA.
    """

    def __init__(self, target_port: int, tmp_path: Path) -> None:
        trustme = pytest.importorskip("trustme")
        authority = trustme.CA()
        self.ca_file = tmp_path / "ca.pem"
        authority.cert_pem.write_to_path(str(self.ca_file))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1").configure_cert(self._context)
        self._target = target_port
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TLSFront:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._context)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


CONNECT_SCRIPT = """
import asyncio, json, sys
import chatkit
from chatkit.providers import OpenAI

base_url, proxy, key = sys.argv[1:4]
scheme = sys.argv[4] if len(sys.argv) > 4 else "https"
provider = OpenAI(base_url=base_url, api_key=key)
messages = [{"role": "user", "content": "Hello"}]

async def run_async():
    async with chatkit.AsyncClient(provider=provider, proxies={scheme: proxy}) as client:
        reply = await client.chat.completions.create(messages=messages)
        parts = [c.choices[0].delta.content or "" async for c in
                 client.chat.completions.create(messages=messages, stream=True) if c.choices]
        return [reply.choices[0].message.content, "".join(parts)]

texts = asyncio.run(run_async())
with chatkit.Client(provider=provider, proxies={scheme: proxy}) as client:
    texts.append(client.chat.completions.create(messages=messages).choices[0].message.content)
    texts.append("".join(c.choices[0].delta.content or "" for c in
                 client.chat.completions.create(messages=messages, stream=True) if c.choices))
print(json.dumps(texts))
"""


def test_https_target_is_tunnelled_with_connect(
    tmp_path: Path, http_proxy: ProxyServer, server: FakeOpenAIServer
) -> None:
    with TLSFront(server.port, tmp_path) as front:
        route = Route(http_proxy, front.port)
        # A separate process: aiohttp builds its default TLS context at import,
        # so only a fresh interpreter can trust the test CA (SSL_CERT_FILE).
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                CONNECT_SCRIPT,
                f"https://127.0.0.1:{front.port}/v1",
                http_proxy.url,
                API_KEY,
            ],
            env={**os.environ, "SSL_CERT_FILE": str(front.ca_file)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        texts = json.loads(done.stdout)
        # Async and sync, each non-streamed then streamed.
        assert texts == [ANSWER] * 4
        # One tunnel per client (keep-alive), each a CONNECT to the TLS port.
        assert route.went_through(2)
        assert route.added() == 2
        assert front.accepted == 2
        assert len(server.requests) == 4


def run_connect_script(
    base_url: str, proxy: str, ca_files: list[Path], scheme: str = "https"
) -> subprocess.CompletedProcess[str]:
    """CONNECT_SCRIPT in a fresh interpreter that trusts ``ca_files`` (and only them)."""
    bundle = ca_files[0].parent / "bundle.pem"
    bundle.write_text("".join(path.read_text() for path in ca_files))
    return subprocess.run(
        [sys.executable, "-c", CONNECT_SCRIPT, base_url, proxy, API_KEY, scheme],
        env={**os.environ, "SSL_CERT_FILE": str(bundle)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def https_proxy(tmp_path: Path) -> Iterator[tuple[ProxyServer, Path]]:
    """An authenticated proxy that clients reach over TLS (an https:// proxy URL)."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    ca_file, cert_file = tmp_path / "proxy-ca.pem", tmp_path / "proxy-cert.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    with start_pproxy(
        "http", username="alice", password=PASSWORD, tls_cert=str(cert_file)
    ) as proxy:
        yield proxy, ca_file


def test_https_proxy_carries_plain_and_tls_targets(
    tmp_path: Path, https_proxy: tuple[ProxyServer, Path], server: FakeOpenAIServer
) -> None:
    proxy, proxy_ca = https_proxy
    assert proxy.url.startswith("https://alice:")
    # A plain-http target: the request goes to the proxy inside TLS.
    plain = Route(proxy, server.port)
    done = run_connect_script(server.base_url, proxy.url, [proxy_ca], scheme="http")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [ANSWER] * 4
    assert plain.went_through(1)
    # An https target: a TLS tunnel inside the TLS connection to the proxy.
    with TLSFront(server.port, tmp_path) as front:
        tunnelled = Route(proxy, front.port)
        done = run_connect_script(
            f"https://127.0.0.1:{front.port}/v1", proxy.url, [proxy_ca, front.ca_file]
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout) == [ANSWER] * 4
        assert tunnelled.went_through(2)
        assert front.accepted == 2
    assert len(server.requests) == 8
    assert_secret_free(done.stderr)


def test_https_proxy_with_wrong_password_is_a_proxy_error(
    https_proxy: tuple[ProxyServer, Path], server: FakeOpenAIServer
) -> None:
    proxy, proxy_ca = https_proxy
    done = run_connect_script(
        server.base_url, proxy.proxy_url(password=WRONG), [proxy_ca], scheme="http"
    )
    assert done.returncode != 0
    assert "chatkit.ProxyError: " in done.stderr, done.stderr[-2000:]
    assert proxy.wait_for_rejections(1)
    assert_secret_free(done.stderr)
    assert WRONG not in done.stderr
    assert server.requests == []


def test_connect_with_wrong_credentials_is_a_proxy_error(
    mode: str, http_proxy: ProxyServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = http_proxy.rejections
    # The proxy refuses the CONNECT before any TLS, so no certificate is needed.
    provider = OpenAI(base_url=f"https://127.0.0.1:{_free_port()}/v1", api_key=API_KEY)
    with pytest.raises(ProxyError, match="refused the tunnel: HTTP 407") as caught:
        chat(
            mode,
            stream=False,
            provider=provider,
            proxy=http_proxy.proxy_url(password=WRONG),
            max_retries=0,
        )
    assert http_proxy.wait_for_rejections(before + 1)
    # aiohttp's own exception holds the password in its repr: it is not chained.
    cause = caught.value.__cause__
    assert isinstance(cause, RedactedCause) and "ClientHttpProxyError" in str(cause)
    assert_secret_free(all_text(caught.value))
    assert_secret_free(caplog.text)


# -- the pproxy helper itself --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"protocol": "ftp"}, "protocol must be one of"),
        ({"protocol": "socks4", "username": "a", "password": "b"}, "SOCKS4 has no password"),
        ({"protocol": "http", "username": "a"}, "needs both"),
        ({"protocol": "socks5", "password": "b"}, "needs both"),
        ({"protocol": "http", "username": "a", "password": ""}, "non-empty single-line"),
        ({"protocol": "http", "username": "a\nb", "password": "c"}, "non-empty single-line"),
    ],
)
def test_proxy_server_validates_its_arguments(args: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ProxyServer(**args)


def test_proxy_server_addresses_need_a_running_server() -> None:
    idle = ProxyServer("http")
    assert repr(idle) == "ProxyServer(http, not started)"
    with pytest.raises(RuntimeError, match="not started"):
        _ = idle.url
    with pytest.raises(RuntimeError, match="not started"):
        _ = idle.address


def test_proxy_server_without_auth(server: FakeOpenAIServer) -> None:
    with ProxyServer("socks5") as open_proxy:
        assert open_proxy.url == open_proxy.address == f"socks5://127.0.0.1:{open_proxy.port}"
        assert "with auth" not in repr(open_proxy)
        with pytest.raises(RuntimeError, match="already started"):
            open_proxy.start()
        assert chat("async", stream=False, provider=provider_for(server), proxy=open_proxy.url)
        assert open_proxy.wait_for_connections(port=server.port, host="127.0.0.1")
        assert not open_proxy.wait_for_connections(2, port=server.port, timeout=0.05)
        assert not open_proxy.wait_for_rejections(timeout=0.05)
        assert any("->" in line for line in open_proxy.log)
    open_proxy.close()  # a second close is harmless


def test_proxy_server_keeps_rejected_passwords_out_of_its_log(
    socks5: ProxyServer, server: FakeOpenAIServer
) -> None:
    before = socks5.rejections
    with pytest.raises(ProxyError):
        chat(
            "async",
            stream=False,
            provider=provider_for(server),
            proxy=socks5.proxy_url(password=WRONG),
            max_retries=0,
        )
    assert socks5.wait_for_rejections(before + 1)
    assert any(line.startswith("Unauthorized") for line in socks5.log)
    assert_secret_free("\n".join(socks5.log))
    assert "alice" not in repr(socks5) and PASSWORD not in repr(socks5)


def test_proxy_server_reports_a_process_that_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    doomed = ProxyServer("http", username="a", password="b")
    with pytest.raises(RuntimeError, match="pproxy did not start: the process exited"):
        doomed.start()
    assert doomed._auth_file is None  # the credentials file is gone


# -- the seed example ------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "seed_via_socks.py"


def test_seed_example_runs_through_an_authenticated_socks5_proxy() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer_part, separator, proof = done.stdout.partition("---\n")
    assert separator
    # The seed prints one delta per line, the role chunk's empty content first.
    assert "".join(answer_part.splitlines()) == ANSWER
    server_line, *logged = proof.splitlines()
    port = server_line.rpartition(":")[2]
    assert server_line.startswith("server: 127.0.0.1:") and port.isdigit()
    assert logged
    for line in logged:
        assert line.startswith("proxy log: socks5 127.0.0.1:")
        assert line.endswith(f"-> 127.0.0.1:{port}")


@pytest.mark.parametrize(
    "environ",
    [
        {"HTTPS_PROXY": "http://upper:1", "https_proxy": ""},
        {"HTTP_PROXY": "http://upper:1", "ALL_PROXY": "socks5://all:2"},
        {"http_proxy": "", "all_proxy": "http://all:3"},
        {"HTTP_PROXY": "http://upper:1", "REQUEST_METHOD": "GET"},
        {"HTTPS_PROXY": "http://upper:1", "REQUEST_METHOD": "GET"},
        {"http_proxy": "http://lower:1", "REQUEST_METHOD": "GET"},
        {"all_proxy": "http://a:1", "NO_PROXY": "api.example"},
        {"ALL_PROXY": "http://a:1", "no_proxy": "", "NO_PROXY": "*"},
        {"ALL_PROXY": "http://a:1", "NO_PROXY": "other.example"},
    ],
)
@pytest.mark.parametrize("target", ["http://api.example/v1", "https://api.example/v1"])
def test_env_proxies_follow_urllib(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], target: str
) -> None:
    """The fast environment lookup gives the proxy urllib's own rules pick."""
    import urllib.request

    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    scheme, host = target.split("://")[0], "api.example"
    urllib_pick = urllib.request.getproxies_environment()
    expected = (
        None
        # Undocumented, so typeshed does not declare it.
        if urllib.request.proxy_bypass_environment(host, urllib_pick)  # type: ignore[attr-defined]
        else urllib_pick.get(scheme) or urllib_pick.get("all")
    )
    chosen = ProxySettings().for_url(target)
    assert (chosen.without_credentials if chosen else None) == expected
