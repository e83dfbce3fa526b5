import socket

import pytest


def test_non_loopback_connections_are_refused() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock, pytest.raises(ConnectionRefusedError, match="beyond loopback"):
        sock.connect(("93.184.216.34", 80))
