"""The gateway's web chat page: served files, and end to end in headless Chromium.

The browser tests drive Debian's Chromium over the DevTools protocol
(tests/_cdp.py): the page talks to a real gateway (``create_app``) whose
client talks to a FakeOpenAIServer, so every byte goes through the real
stack. The upstream server records what the page's conversation became.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from _cdp import Browser, chromium_missing_reason
from aiohttp import web
from yarl import URL

import chatkit
from chatkit.server import create_app
from chatkit.server._page import CONTENT_SECURITY_POLICY, STATIC_DIR, add_page_routes
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio

UPSTREAM_KEY = "sk-upstream-secret"
GATEWAY_KEY = "gw-secret"
ASSETS = {
    "/static/app.js": "text/javascript",
    "/static/style.css": "text/css",
    "/static/favicon.svg": "image/svg+xml",
}

needs_chromium = pytest.mark.skipif(
    chromium_missing_reason() is not None, reason=chromium_missing_reason() or ""
)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a loopback port; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def gateway(upstream: FakeOpenAIServer, **options: Any) -> AsyncIterator[str]:
    """chatkit's gateway in front of `upstream`; yields its base URL."""
    client = chatkit.AsyncClient(base_url=upstream.base_url, api_key=UPSTREAM_KEY, max_retries=0)
    async with client, serving(create_app(client, **options)) as url:
        yield url


# -- the served files ----------------------------------------------------------


async def test_the_page_and_its_files_are_served_with_a_same_origin_policy() -> None:
    app = web.Application()
    add_page_routes(app)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/") as page:
            assert page.status == 200
            assert page.content_type == "text/html"
            assert page.charset == "utf-8"
            html = await page.text()
            assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert page.headers["X-Content-Type-Options"] == "nosniff"
            assert page.headers["Referrer-Policy"] == "no-referrer"
        # Relative, so that the page also works when the app is mounted under a prefix.
        assert '<script src="static/app.js" defer></script>' in html
        assert '<link rel="stylesheet" href="static/style.css">' in html
        for path, content_type in ASSETS.items():
            async with http.get(url + path) as asset:
                assert asset.status == 200, path
                assert asset.content_type == content_type
                assert asset.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                name = path.removeprefix("/static/")
                assert await asset.read() == (STATIC_DIR / name).read_bytes()
        async with http.head(url + "/") as head:
            assert head.status == 200
            assert head.content_type == "text/html"


async def test_files_revalidate_with_their_etag() -> None:
    app = web.Application()
    add_page_routes(app)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/static/app.js") as first:
            etag = first.headers["ETag"]
            assert first.headers["Cache-Control"] == "no-cache"
        for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            async with http.get(url + "/static/app.js", headers={"If-None-Match": header}) as again:
                assert again.status == 304, header
                assert await again.read() == b""
                assert again.headers["ETag"] == etag
        async with http.get(url + "/", headers={"If-None-Match": etag}) as page:
            assert page.status == 200  # another file, another tag
        async with http.get(url + "/static/app.js", headers={"If-None-Match": '"x"'}) as changed:
            assert changed.status == 200


async def test_only_the_shipped_files_are_reachable() -> None:
    async with (
        FakeOpenAIServer() as upstream,
        gateway(upstream) as url,
        aiohttp.ClientSession() as http,
    ):
        for path in ("/static/nope.js", "/static/index.html", "/static/%2e%2e/_page.py"):
            async with http.get(URL(url + path, encoded=True)) as missing:
                assert missing.status == 404, path


async def test_the_page_needs_no_key_while_the_api_does() -> None:
    async with (
        FakeOpenAIServer() as upstream,
        gateway(upstream, api_key=GATEWAY_KEY) as url,
        aiohttp.ClientSession() as http,
    ):
        for path in ("/", *ASSETS):
            async with http.get(url + path) as response:
                assert response.status == 200, path
        async with http.get(url + "/v1/models") as models:
            assert models.status == 401


def test_the_files_reference_no_other_origin_and_never_parse_output_as_html() -> None:
    svg_namespace = "http://www.w3.org/2000/svg"
    for path in STATIC_DIR.iterdir():
        text = path.read_text().replace(svg_namespace, "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", text, re.I), path.name
        assert "@import" not in text and "url(" not in text, path.name
    script = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


# -- in the browser ------------------------------------------------------------

LAST_ANSWER = """(() => {
    const items = document.querySelectorAll(".message.assistant");
    const last = items[items.length - 1];
    if (!last) return null;
    return {
        text: last.querySelector(".content").textContent,
        state: last.dataset.state,
        note: (last.querySelector(".note") || {}).textContent || "",
        sendDisabled: document.getElementById("send").disabled,
        stopDisabled: document.getElementById("stop").disabled,
    };
})()"""

ERROR_TEXT = """(() => {
    const box = document.getElementById("error");
    return !box.hidden && box.textContent;
})()"""

CONVERSATION = """Array.from(document.querySelectorAll("#conversation .message")).map(
    (m) => [m.classList.contains("user") ? "user" : "assistant",
            m.querySelector(".content").textContent])"""


def _answer_where(condition: str) -> str:
    """A wait_for expression: the last answer, once `condition` holds for it (as `a`)."""
    return f"(() => {{ const a = {LAST_ANSWER}; return a && ({condition}) ? a : null; }})()"


async def _open_page(browser: Browser, url: str, models: int = 1) -> None:
    await browser.navigate(url + "/")
    await browser.wait_for(f"document.getElementById('model-select').options.length > {models}")


async def _send(browser: Browser, text: str) -> None:
    await browser.type_text("#prompt", text)
    await browser.press_enter()


async def _set_value(browser: Browser, selector: str, value: str) -> None:
    """Set a field the way a user would end up with it, and fire its change event."""
    await browser.evaluate(
        f"""(() => {{
            const field = document.querySelector({json.dumps(selector)});
            field.value = {json.dumps(value)};
            field.dispatchEvent(new Event("change", {{ bubbles: true }}));
        }})()"""
    )


def _assert_stayed_on(browser: Browser, url: str) -> None:
    """Every request the page made went to the gateway's own loopback origin."""
    assert browser.requested_urls, "the browser recorded no requests"
    for requested in browser.requested_urls:
        parts = urlsplit(requested)
        assert parts.scheme == "http" and parts.hostname == "127.0.0.1", requested
        assert requested.startswith(url + "/"), requested


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with Browser() as running:
        yield running


@needs_chromium
async def test_an_answer_streams_in_and_the_conversation_is_kept(browser: Browser) -> None:
    upstream_server = FakeOpenAIServer(
        Behavior(text="Second answer."), models=["fake-model", "other-model"]
    )
    first = ["Hello", " from", " the", " fake", " server."]
    # A pause after two pieces: the page must show them before the rest exists.
    upstream_server.script(Behavior(chunks=first, stall_after=2, stall_seconds=2.0))
    async with upstream_server as upstream, gateway(upstream) as url:
        await _open_page(browser, url, models=2)
        options = await browser.evaluate(
            "Array.from(document.getElementById('model-select').options).map((o) => o.value)"
        )
        assert options == ["", "fake-model", "other-model"]
        await _set_value(browser, "#model-select", "other-model")

        await _send(browser, "Hi there")
        partial = await browser.wait_for(_answer_where("a.text"))
        assert partial["state"] == "streaming"
        assert partial["sendDisabled"] and not partial["stopDisabled"]
        assert "".join(first).startswith(partial["text"])
        assert len(partial["text"]) < len("".join(first))
        paused = await browser.wait_for(_answer_where("a.text === 'Hello from'"))
        assert paused["state"] == "streaming"
        done = await browser.wait_for(_answer_where("a.state === 'done'"))
        assert done["text"] == "Hello from the fake server."
        assert not done["sendDisabled"] and done["stopDisabled"]
        assert await browser.text("#status") == "Done."
        sent = upstream.requests[-1].json
        assert sent["model"] == "other-model"
        assert sent["stream"] is True
        assert sent["messages"] == [{"role": "user", "content": "Hi there"}]

        # The second turn sends the whole conversation, with the system prompt.
        await _set_value(browser, "#system-prompt", "Be brief.")
        await browser.type_text("#prompt", "And again?")
        await browser.click("#send")
        await browser.wait_for(_answer_where("a.state === 'done' && a.text === 'Second answer.'"))
        assert upstream.requests[-1].json["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello from the fake server."},
            {"role": "user", "content": "And again?"},
        ]
        assert await browser.evaluate(CONVERSATION) == [
            ["user", "Hi there"],
            ["assistant", "Hello from the fake server."],
            ["user", "And again?"],
            ["assistant", "Second answer."],
        ]
        assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        _assert_stayed_on(browser, url)


@needs_chromium
async def test_stop_keeps_the_partial_answer_and_cancels_the_upstream_request(
    browser: Browser,
) -> None:
    upstream_server = FakeOpenAIServer(Behavior(text="Fine."))
    upstream_server.script(Behavior(chunks=["Partial", " answer", " never seen"], stall_after=2))
    async with upstream_server as upstream, gateway(upstream) as url:
        await _open_page(browser, url)
        await _send(browser, "Tell me everything")
        await browser.wait_for(_answer_where("a.text === 'Partial answer'"))
        await browser.click("#stop")
        assert await upstream.wait_for_disconnects(1, timeout=10.0)
        stopped = await browser.wait_for(_answer_where("a.state === 'stopped'"))
        assert stopped["text"] == "Partial answer"
        assert stopped["note"] == "Stopped."
        assert not stopped["sendDisabled"] and stopped["stopDisabled"]
        assert await browser.evaluate(ERROR_TEXT) is False
        assert await browser.text("#status") == "Stopped."

        # What was kept is part of the conversation from now on.
        await _send(browser, "Go on")
        await browser.wait_for(_answer_where("a.state === 'done' && a.text === 'Fine.'"))
        assert upstream.requests[-1].json["messages"] == [
            {"role": "user", "content": "Tell me everything"},
            {"role": "assistant", "content": "Partial answer"},
            {"role": "user", "content": "Go on"},
        ]
        _assert_stayed_on(browser, url)


@needs_chromium
async def test_stop_before_any_text_withdraws_the_message(browser: Browser) -> None:
    # Escape stops too; nothing arrived, so the question goes back into the box.
    async with (
        FakeOpenAIServer(Behavior(chunks=["never"], stall_after=0)) as upstream,
        gateway(upstream) as url,
    ):
        await _open_page(browser, url)
        await _send(browser, "Anyone there?")
        await browser.wait_for("!document.getElementById('stop').disabled")
        key = {"key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27}
        await browser.send("Input.dispatchKeyEvent", {"type": "keyDown", **key})
        await browser.send("Input.dispatchKeyEvent", {"type": "keyUp", **key})
        assert await upstream.wait_for_disconnects(1, timeout=10.0)
        await browser.wait_for("document.getElementById('status').textContent === 'Stopped.'")
        assert await browser.evaluate(CONVERSATION) == []
        assert await browser.evaluate("document.getElementById('prompt').value") == "Anyone there?"
        assert await browser.evaluate("document.getElementById('empty-hint').hidden") is False
        _assert_stayed_on(browser, url)


@needs_chromium
async def test_an_upstream_error_status_is_shown_and_the_message_can_be_resent(
    browser: Browser,
) -> None:
    async with (
        FakeOpenAIServer(Behavior(text="Now it works.")) as upstream,
        gateway(upstream) as url,
    ):
        await _open_page(browser, url)
        upstream.fail(1, 401)
        await _send(browser, "Hello?")
        error = await browser.wait_for(ERROR_TEXT)
        assert error.startswith("HTTP 401: ")
        assert "rejected the gateway's credentials" in error
        assert UPSTREAM_KEY not in error
        assert await browser.evaluate(CONVERSATION) == []
        assert await browser.evaluate("document.getElementById('prompt').value") == "Hello?"
        assert await browser.text("#status") == "Failed."

        await browser.click("#send")
        await browser.wait_for(_answer_where("a.state === 'done'"))
        assert await browser.evaluate(ERROR_TEXT) is False
        assert await browser.evaluate(CONVERSATION) == [
            ["user", "Hello?"],
            ["assistant", "Now it works."],
        ]
        assert upstream.requests[-1].json["messages"] == [{"role": "user", "content": "Hello?"}]
        _assert_stayed_on(browser, url)


@needs_chromium
async def test_an_error_event_mid_stream_is_shown_and_the_partial_answer_kept(
    browser: Browser,
) -> None:
    behavior = Behavior(chunks=["Half", " an", " answer"], error_event_after=2)
    async with FakeOpenAIServer(behavior) as upstream, gateway(upstream) as url:
        await _open_page(browser, url)
        await _send(browser, "Try")
        failed = await browser.wait_for(_answer_where("a.state === 'failed'"))
        assert failed["text"] == "Half an"
        assert failed["note"] == "Interrupted: the answer is incomplete."
        error = await browser.evaluate(ERROR_TEXT)
        assert "fake error event" in error
        assert await browser.text("#status") == "Failed."
        _assert_stayed_on(browser, url)


@needs_chromium
async def test_a_lost_gateway_is_reported(browser: Browser) -> None:
    async with FakeOpenAIServer() as upstream:
        async with gateway(upstream) as url:
            await _open_page(browser, url)
        # The gateway is gone: the page says so instead of hanging.
        await _send(browser, "Still there?")
        error = await browser.wait_for(ERROR_TEXT)
        assert error.startswith("The gateway is unreachable")
        assert await browser.evaluate("document.getElementById('prompt').value") == "Still there?"


@needs_chromium
async def test_model_output_is_shown_as_text_never_as_markup(browser: Browser) -> None:
    hostile = ['<img src=x onerror="window.pwned=1">', "<b>bold</b>", "\nline two"]
    async with FakeOpenAIServer(Behavior(chunks=hostile)) as upstream, gateway(upstream) as url:
        await _open_page(browser, url)
        await _send(browser, "<script>window.pwned=2</script>")
        done = await browser.wait_for(_answer_where("a.state === 'done'"))
        assert done["text"] == "".join(hostile)
        markup = await browser.evaluate(
            "document.querySelectorAll('#conversation img, #conversation b, "
            "#conversation script').length"
        )
        assert markup == 0
        assert await browser.evaluate("window.pwned === undefined") is True
        assert await browser.evaluate(CONVERSATION) == [
            ["user", "<script>window.pwned=2</script>"],
            ["assistant", "".join(hostile)],
        ]


@needs_chromium
async def test_a_typed_provider_model_wins_over_the_list(browser: Browser) -> None:
    async with FakeOpenAIServer() as upstream, gateway(upstream) as url:
        await _open_page(browser, url)
        await browser.type_text("#model-custom", "typed-model")
        await _send(browser, "Which model?")
        await browser.wait_for(_answer_where("a.state === 'done'"))
        # The gateway's provider is fixed, so the model goes upstream as typed.
        assert upstream.requests[-1].json["model"] == "typed-model"


@needs_chromium
async def test_the_gateway_api_key_is_asked_for_kept_for_the_tab_and_sent(
    browser: Browser,
) -> None:
    sent_headers: list[dict[str, str]] = []
    browser.on(
        "Network.requestWillBeSent",
        lambda params: sent_headers.append(params["request"]["headers"]),
    )
    async with FakeOpenAIServer() as upstream, gateway(upstream, api_key=GATEWAY_KEY) as url:
        await browser.navigate(url + "/")
        error = await browser.wait_for(ERROR_TEXT)
        assert error.startswith("Could not list models: HTTP 401: ")
        assert await browser.evaluate("document.getElementById('settings').open") is True

        await _set_value(browser, "#api-key", GATEWAY_KEY)
        await browser.wait_for("document.getElementById('model-select').options.length > 1")
        assert await browser.evaluate(ERROR_TEXT) is False
        assert await browser.evaluate("sessionStorage.getItem('chatkit.apiKey')") == GATEWAY_KEY
        await _send(browser, "With a key")
        await browser.wait_for(_answer_where("a.state === 'done'"))
        assert f"Bearer {GATEWAY_KEY}" in [h.get("Authorization") for h in sent_headers]
        # Upstream sees the gateway's own upstream key, never the caller's.
        assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"

        # A reload in the same tab keeps the key; the models load at once.
        await browser.navigate(url + "/")
        await browser.wait_for("document.getElementById('model-select').options.length > 1")
        assert await browser.evaluate("document.getElementById('api-key').value") == GATEWAY_KEY
        _assert_stayed_on(browser, url)


@needs_chromium
async def test_new_chat_clears_the_conversation_even_mid_stream(browser: Browser) -> None:
    upstream_server = FakeOpenAIServer(Behavior(text="Fresh start."))
    upstream_server.script(Behavior(chunks=["Old", " words", " dropped"], stall_after=2))
    async with upstream_server as upstream, gateway(upstream) as url:
        await _open_page(browser, url)
        await _send(browser, "First topic")
        await browser.wait_for(_answer_where("a.text === 'Old words'"))
        await browser.click("#new-chat")
        assert await upstream.wait_for_disconnects(1, timeout=10.0)
        assert await browser.evaluate(CONVERSATION) == []
        assert await browser.text("#status") == "New conversation."
        await _send(browser, "Second topic")
        await browser.wait_for(_answer_where("a.state === 'done'"))
        assert upstream.requests[-1].json["messages"] == [
            {"role": "user", "content": "Second topic"}
        ]


@needs_chromium
async def test_the_page_works_with_the_gateway_mounted_under_a_prefix(browser: Browser) -> None:
    async with FakeOpenAIServer(Behavior(text="Mounted.")) as upstream:
        client = chatkit.AsyncClient(base_url=upstream.base_url, api_key=UPSTREAM_KEY)
        root = web.Application(handler_args={"handler_cancellation": True})
        root.add_subapp("/llm", create_app(client, api_key=GATEWAY_KEY))
        async with client, serving(root) as url:
            await browser.navigate(url + "/llm/")
            await browser.wait_for("document.getElementById('error').textContent")
            await _set_value(browser, "#api-key", GATEWAY_KEY)
            await browser.wait_for("document.getElementById('model-select').options.length > 1")
            assert await browser.evaluate("getComputedStyle(document.body).maxWidth") != "none"
            await _send(browser, "Hello below /llm")
            done = await browser.wait_for(_answer_where("a.state === 'done'"))
            assert done["text"] == "Mounted."
            _assert_stayed_on(browser, url + "/llm")


@needs_chromium
async def test_the_browser_refuses_requests_to_other_hosts(browser: Browser) -> None:
    async with FakeOpenAIServer() as upstream, gateway(upstream) as url:
        await _open_page(browser, url)
        # The policy the page is served with blocks other origins before any
        # connection: the probe address (TEST-NET-1) is never contacted.
        blocked = await browser.evaluate(
            """new Promise((resolve) => {
                document.addEventListener(
                    "securitypolicyviolation",
                    (event) => resolve([event.violatedDirective, event.blockedURI]),
                    { once: true },
                );
                fetch("http://192.0.2.1/probe").catch(() => {});
            })"""
        )
        assert blocked == ["connect-src", "http://192.0.2.1/probe"]
        # Nor can injected markup run script (DevTools' own evaluate bypasses
        # the policy, so the probe is a script element, as an XSS would be).
        refused = await browser.evaluate(
            """new Promise((resolve) => {
                document.addEventListener(
                    "securitypolicyviolation",
                    (event) => resolve(event.effectiveDirective),
                    { once: true },
                );
                const script = document.createElement("script");
                script.textContent = "window.inlineRan = true";
                document.body.append(script);
            })"""
        )
        assert refused == "script-src-elem"
        assert await browser.evaluate("window.inlineRan === undefined") is True
        requested = [u for u in browser.requested_urls if not u.startswith("http://192.0.2.1/")]
        assert requested, "the browser recorded no requests"
        assert all(u.startswith(url + "/") for u in requested), requested


# -- the page's own SSE reading, against hand-written bytes ---------------------------


def _chunk(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}).encode()


class RawUpstream:
    """The page's routes plus an API that answers each chat request with scripted bytes."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str, list[bytes]]] = []
        self.app = web.Application()
        add_page_routes(self.app)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/chat/completions", self._chat)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "raw"}, {"no": "id"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        status, content_type, pieces = self.answers.pop(0)
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        await response.prepare(request)
        try:
            for piece in pieces:
                await response.write(piece)
                # Separate reads in the browser where possible, so that splits are
                # exercised; were two pieces coalesced the test would still hold.
                await asyncio.sleep(0.02)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the page stops reading at [DONE] or at an error event
        return response


SSE = "text/event-stream"


@needs_chromium
async def test_the_page_reads_sse_split_anywhere(browser: Browser) -> None:
    raw = RawUpstream()
    # A literal "\u00e9" (not JSON-escaped), cut between its two UTF-8 bytes.
    utf8 = b'data: {"choices":[{"delta":{"content":"\xc3\xa9"}}]}\n\n'
    cut = utf8.index(b"\xc3") + 1
    raw.answers.append(
        (
            200,
            SSE,
            [
                b": a comment, then an empty event\r\n\r\ndata:\r\n\r\n",
                b"data: " + _chunk("A") + b"\n\n",
                # Two data lines of one event, with the CRLF between them split
                # across reads: the CR alone must not end the event.
                b'event: message\nid: 7\nretry: 100\ndata: {"choices":\r',
                b'\ndata: [{"delta":{"content":"B"}}]}\r\n\r\n',
                b'data: {"choices":\ndata: [{"delta":{"content":"C"}}]}\n\n',
                b"data:" + _chunk("D") + b"\r\r",  # CR line ends, no space after the colon
                utf8[:cut],
                utf8[cut:],
                b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n',
                b"data: [DONE]\n\ndata: " + _chunk("after the end") + b"\n\n",
            ],
        )
    )
    async with serving(raw.app) as url:
        await _open_page(browser, url)
        assert await browser.evaluate("document.getElementById('model-select').value") == "raw"
        await _send(browser, "Go")
        done = await browser.wait_for(_answer_where("a.state === 'done'"))
        assert done["text"] == "ABCD\u00e9"
        assert await browser.evaluate(ERROR_TEXT) is False


@needs_chromium
async def test_the_page_reports_what_it_cannot_use(browser: Browser) -> None:
    raw = RawUpstream()
    cases = [
        # (status, content type, body pieces), the error shown, the partial text kept
        (
            (200, SSE, [b"data: " + _chunk("cut") + b"\n\n"]),
            "The answer ended early: the stream closed before it was complete.",
            "cut",
        ),
        ((200, SSE, [b"data: {not json\n\n"]), "The gateway sent an event that is not JSON.", ""),
        ((200, SSE, [b'event: error\ndata: {"message": "boom"}\n\n']), "boom", ""),
        ((200, SSE, [b"event: error\ndata: plain words\n\n"]), "plain words", ""),
        ((200, SSE, [b'data: {"error": "a bare string"}\n\n']), "a bare string", ""),
        ((200, SSE, [b'data: {"error": {"type": "odd_error"}}\n\n']), "odd_error", ""),
        ((200, SSE, [b'data: {"error": {}}\n\n']), "unknown error", ""),
        ((502, "text/html", [b"<h1>Bad gateway</h1>"]), "HTTP 502: <h1>Bad gateway</h1>", ""),
        ((503, "application/json", []), "HTTP 503: Service Unavailable", ""),
        (
            (429, "application/json", [b'{"error": {"message": "slow down"}}']),
            "HTTP 429: slow down",
            "",
        ),
    ]
    async with serving(raw.app) as url:
        await _open_page(browser, url)
        for number, (answer, error, kept) in enumerate(cases):
            raw.answers.append(answer)
            question = f"question {number}"
            await _send(browser, question)
            shown = await browser.wait_for(ERROR_TEXT)
            assert shown == error, answer
            conversation = await browser.evaluate(CONVERSATION)
            if kept:
                assert conversation[-1] == ["assistant", kept]
                assert await browser.evaluate("document.getElementById('prompt').value") == ""
            else:
                # Withdrawn: back in the box, to be sent again or replaced.
                assert [question] not in [m[1:] for m in conversation]
                prompt = "document.getElementById('prompt').value"
                assert await browser.evaluate(prompt) == question
                await browser.evaluate(f"{prompt} = ''")
        assert await browser.evaluate("document.querySelectorAll('#conversation h1').length") == 0
