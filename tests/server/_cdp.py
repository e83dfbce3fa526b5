"""A small Chrome DevTools Protocol driver for the web page tests.

It starts Debian's headless Chromium, connects to its page target over a
websocket with aiohttp and offers what the tests need: navigate, run
JavaScript (awaiting promises), type with real input events, and wait for a
condition inside the page with a bounded timeout. Every request the page makes
is recorded from the Network domain, so a test can prove that nothing left
the machine. No Playwright and no browser download: only /usr/bin/chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import tempfile
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import aiohttp

__all__ = ["CHROMIUM", "Browser", "BrowserError", "JavaScriptError", "chromium_missing_reason"]

CHROMIUM = "/usr/bin/chromium"

# Quiet, deterministic, offline: no first-run UI, no component or sync traffic.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--password-store=basic",
    "--mute-audio",
    "--window-size=1024,768",
)

_LISTENING = re.compile(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/")
_STARTUP_TIMEOUT = 30.0
_COMMAND_TIMEOUT = 20.0
_LOG_LIMIT = 64 * 1024


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (Debian: apt-get install -y chromium)"
    return None


class BrowserError(RuntimeError):
    """Chromium failed to start, or a DevTools command failed."""


class JavaScriptError(RuntimeError):
    """JavaScript evaluated in the page threw."""


class Browser:
    """One headless Chromium process with one page, driven over CDP.

    ``async with Browser() as browser:`` starts it; leaving the block ends the
    process (and any helper processes it started) and removes its profile.
    """

    def __init__(self) -> None:
        self.requested_urls: list[str] = []
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._log = bytearray()
        self._log_task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[str, list[Callable[[dict[str, Any]], None]]] = {}

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Browser:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start(self) -> None:
        self._profile = tempfile.TemporaryDirectory(
            prefix="chatkit-chromium-", ignore_cleanup_errors=True
        )
        profile = self._profile.name
        self._process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so that close() can end the helpers too.
            start_new_session=True,
        )
        self._log_task = asyncio.create_task(self._collect_log())
        # Chromium announces its DevTools endpoint on stderr once it listens.
        # (DevToolsActivePort in the profile holds the same port, but it may be
        # written after that line: reading it then races the browser.)
        try:
            await asyncio.wait_for(self._listening.wait(), _STARTUP_TIMEOUT)
        except TimeoutError:
            raise BrowserError(f"Chromium did not start:\n{self.log}") from None
        found = _LISTENING.search(self.log)
        if found is None:
            raise BrowserError(f"Chromium exited ({self._process.returncode}):\n{self.log}")
        port = int(found.group(1))
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise BrowserError(f"Chromium has no page target: {targets!r}")
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read_messages())
        self.on("Network.requestWillBeSent", self._record_request)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Network.enable")

    async def _collect_log(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        async for line in self._process.stderr:
            if len(self._log) < _LOG_LIMIT:
                self._log.extend(line)
            if b"DevTools listening on" in line:
                self._listening.set()
        self._listening.set()  # exited: wake the starter, which reports it

    @property
    def log(self) -> str:
        """What Chromium wrote to stderr (its first 64 KiB)."""
        return self._log.decode(errors="replace")

    async def close(self) -> None:
        """End the connection, the browser and its helper processes; remove the profile."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        if process is not None:
            # Renderer and utility processes normally die with the browser;
            # make sure none of the group this test started outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log_task is not None:
            await self._log_task
        if self._profile is not None:
            self._profile.cleanup()
        self._reader = self._ws = self._session = self._process = None
        self._log_task = self._profile = None

    # -- protocol --------------------------------------------------------------

    async def _read_messages(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            future = self._pending.pop(data["id"], None) if "id" in data else None
            if future is not None:
                if not future.done():
                    future.set_result(data)
            else:
                for listener in list(self._listeners.get(data.get("method", ""), ())):
                    listener(data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError(f"DevTools connection closed:\n{self.log}"))

    def on(self, method: str, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener` with the params of every `method` event."""
        self._listeners.setdefault(method, []).append(listener)

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one DevTools command and return its result."""
        assert self._ws is not None, "the browser is not started"
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        await self._ws.send_json({"id": number, "method": method, "params": params or {}})
        try:
            reply = await asyncio.wait_for(future, _COMMAND_TIMEOUT)
        finally:
            self._pending.pop(number, None)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    @contextlib.contextmanager
    def expect_event(self, method: str) -> Iterator[asyncio.Future[dict[str, Any]]]:
        """A future for the next `method` event, listening from the start of the block."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def listener(params: dict[str, Any]) -> None:
            if not future.done():
                future.set_result(params)

        self.on(method, listener)
        try:
            yield future
        finally:
            self._listeners[method].remove(listener)

    def _record_request(self, params: dict[str, Any]) -> None:
        self.requested_urls.append(params["request"]["url"])

    # -- page helpers ----------------------------------------------------------

    async def navigate(self, url: str) -> None:
        """Load `url` and wait for its load event."""
        with self.expect_event("Page.loadEventFired") as loaded:
            result = await self.send("Page.navigate", {"url": url})
            if result.get("errorText"):
                raise BrowserError(f"navigating to {url} failed: {result['errorText']}")
            await asyncio.wait_for(loaded, _COMMAND_TIMEOUT)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "awaitPromise": True,
                "returnByValue": True,
                "userGesture": True,
            },
        )
        details = result.get("exceptionDetails")
        if details is not None:
            thrown = details.get("exception", {}).get("description") or details.get("text")
            raise JavaScriptError(str(thrown))
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Poll a JavaScript expression inside the page until it is truthy; return its value.

        Raises JavaScriptError naming the expression when `timeout` seconds pass.
        """
        if timeout >= _COMMAND_TIMEOUT:
            raise ValueError(f"timeout must stay below {_COMMAND_TIMEOUT} s")
        script = f"""(async () => {{
            const check = () => ({expression});
            const deadline = performance.now() + {timeout * 1000};
            for (;;) {{
                const value = check();
                if (value) return value;
                if (performance.now() > deadline) {{
                    throw new Error("timed out waiting for: " + {json.dumps(expression)});
                }}
                await new Promise((resolve) => setTimeout(resolve, 10));
            }}
        }})()"""
        return await self.evaluate(script)

    async def type_text(self, selector: str, text: str) -> None:
        """Focus the element and insert `text` the way typing does (input events)."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", {"text": text})

    async def press_enter(self) -> None:
        """Press and release Enter in the focused element."""
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        await self.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": "\r", **key})
        await self.send("Input.dispatchKeyEvent", {"type": "keyUp", **key})

    async def click(self, selector: str) -> None:
        """Click an element (a disabled button ignores it, as it would a real click)."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def text(self, selector: str) -> str:
        """The textContent of the element."""
        value = await self.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")
        return str(value)
