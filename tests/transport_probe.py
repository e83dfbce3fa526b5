"""What leak tests count in a ``Transport``: kept out of chatkit, which never needs it."""

from __future__ import annotations

from chatkit._sockets import connections
from chatkit._transport import Transport


def open_connections(transport: Transport) -> int:
    """Connections currently held, idle or in use, across the transport's sessions."""
    total = 0
    for slot in transport._per_loop.values():
        for session in slot.sessions.values():
            connector = session.connector
            if connector is None or connector.closed:
                continue
            idle, in_use = connections(connector)
            total += len(idle) + len(in_use)
    return total


def session_count(transport: Transport) -> int:
    """Open aiohttp sessions across loops (for tests of the SOCKS session cap)."""
    return sum(
        1
        for slot in transport._per_loop.values()
        for session in slot.sessions.values()
        if not session.closed
    )
