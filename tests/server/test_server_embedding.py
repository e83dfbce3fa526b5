"""``create_app`` inside someone else's aiohttp application: sub-apps, extra routes."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web
from server_support import MESSAGES, UPSTREAM_KEY, running, sse_events, upstream_client

from chatkit.server import create_app
from chatkit.testing import Behavior, FakeOpenAIServer

pytestmark = pytest.mark.anyio


async def test_mounted_under_a_prefix_keeps_auth_and_semantics() -> None:
    async with (
        FakeOpenAIServer(Behavior(text="under a prefix"), api_key=UPSTREAM_KEY) as upstream,
        upstream_client(upstream) as client,
    ):
        root = web.Application()
        root.add_subapp("/gateway", create_app(client, api_key="k"))
        async with running(root) as url, aiohttp.ClientSession() as session:
            chat = url + "/gateway/v1/chat/completions"
            body = {"messages": MESSAGES, "stream": True}
            async with session.post(chat, json=body) as denied:
                assert denied.status == 401
            auth = {"Authorization": "Bearer k"}
            async with session.post(chat, json=body, headers=auth) as allowed:
                assert allowed.status == 200
                events = sse_events(await allowed.read())
            async with session.get(url + "/gateway/health") as health:
                assert health.status == 200
    assert events[-1] == "[DONE]"
    assert len(upstream.requests) == 1


async def test_without_handler_cancellation_a_disconnect_ends_at_the_next_write() -> None:
    # A root app run without handler_cancellation (the sub-app's setting does not
    # apply): the gateway notices the caller is gone when its next write fails.
    behavior = Behavior(chunks=["tick"], repeat=2000, delay=0.01)
    async with (
        FakeOpenAIServer(behavior, api_key=UPSTREAM_KEY) as upstream,
        upstream_client(upstream) as client,
    ):
        root = web.Application()
        root.add_subapp("/gw", create_app(client))
        async with running(root) as url:
            async with aiohttp.ClientSession() as session:
                response = await session.post(
                    url + "/gw/v1/chat/completions",
                    json={"messages": MESSAGES, "stream": True},
                )
                assert response.status == 200
                received = b""
                while b'"tick"' not in received:
                    received += await response.content.readany()
                response.close()
            assert await upstream.wait_for_disconnects(1)


async def test_routes_added_by_the_embedder_keep_their_own_answers() -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/health")

    async def conflict(request: web.Request) -> web.StreamResponse:
        raise web.HTTPConflict()

    async with (
        FakeOpenAIServer(api_key=UPSTREAM_KEY) as upstream,
        upstream_client(upstream) as client,
    ):
        app = create_app(client)
        app.router.add_get("/moved", moved)
        app.router.add_get("/conflict", conflict)
        async with running(app) as url, aiohttp.ClientSession() as session:
            async with session.get(url + "/moved", allow_redirects=False) as redirect:
                assert redirect.status == 302
                assert redirect.headers["Location"] == "/health"
            async with session.get(url + "/conflict") as clash:
                assert clash.status == 409
                body = json.loads(await clash.read())
    assert body == {
        "error": {
            "message": "Conflict",
            "type": "conflict_error",
            "param": None,
            "code": None,
        }
    }
