"""Reading an aiohttp connector's connections, and closing the sockets of a dead loop's.

Moved out of ``_transport`` (which stays the only package importing aiohttp):
these read private attributes of aiohttp's connector and asyncio's transports
by name, so they need no import of either. ``_transport._sessions`` uses them.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["close_sockets", "connections"]


def connections(connector: Any) -> tuple[list[Any], list[Any]]:
    """An aiohttp connector's (idle, in use) connections (``ResponseHandler``s).

    aiohttp has no public API for them, so this reads its private ``_conns``
    and ``_acquired``; if a release renames them, fail loudly instead of
    treating every connector as empty (which would evict busy sessions and
    leave sockets of dead loops open).
    """
    try:
        idle = [proto for conns in connector._conns.values() for proto, _ in conns]
        in_use = list(connector._acquired)
    except AttributeError as exc:
        raise RuntimeError(_internals_changed("aiohttp's BaseConnector", exc)) from exc
    return idle, in_use


def _internals_changed(what: str, exc: AttributeError) -> str:
    return f"{what} no longer has the private attribute chatkit reads ({exc}); please report it"


def close_sockets(connector: Any) -> None:
    """Close the sockets of a connector whose loop is closed.

    Neither the connector nor its transports can close themselves once their
    loop is closed (closing schedules callbacks on it), so their sockets
    would stay open until garbage collection. This reads private attributes
    of aiohttp and asyncio and raises if one of them is gone.
    """
    idle, in_use = connections(connector)
    for proto in idle + in_use:
        transport = getattr(proto, "transport", None)
        if transport is None:
            continue  # never connected, or already lost
        # A TLS transport wraps the socket transport of its SSL protocol.
        ssl_protocol = getattr(transport, "_ssl_protocol", None)
        if ssl_protocol is not None:
            transport = ssl_protocol._transport
        try:
            sock = transport._sock
        except AttributeError as exc:
            raise RuntimeError(_internals_changed("asyncio's socket transport", exc)) from exc
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            # What the transport's own close would do: it now reads as closed
            # and its __del__ does not warn about an unclosed socket.
            transport._sock = None
    # Emptied, the connector's __del__ finds nothing to warn about.
    connector._conns.clear()
    connector._acquired.clear()
