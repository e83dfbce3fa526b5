"""Real proxy servers for tests: pproxy in a subprocess on 127.0.0.1.

`ProxyServer` runs ``python -m pproxy`` with one listener (HTTP with CONNECT,
SOCKS4 or SOCKS5; the HTTP one optionally over TLS, an ``https://`` proxy),
optionally with a user name and password, and reads the
proxy's verbose log so a test can prove where a connection really went::

    with start_pproxy("socks5", username="alice", password="s3cret") as proxy:
        client = AsyncClient(proxy=proxy.url, base_url=server.base_url)
        ...
        assert proxy.wait_for_connections(port=server.port)

pproxy remembers a successful login per client IP for 30 days by default, so
a later wrong password would get in; the server is started with ``--auth 0``
so that every connection authenticates afresh.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal
from urllib.parse import quote

__all__ = ["ProxyConnection", "ProxyServer", "start_pproxy"]

ProxyProtocol = Literal["http", "socks4", "socks5"]
_PROTOCOLS: tuple[str, ...] = ("http", "socks4", "socks5")

_SERVING = re.compile(r"^Serving on .*?(\d+\.\d+\.\d+\.\d+):(\d+) by (\S+)")
_CONNECTION = re.compile(r"^(\w+) (\S+) -> (\S+)$")
# pproxy prints the rejected user and password; keep them out of the record.
_REJECTED_CREDENTIALS = re.compile(r"b'.*?':b'.*?'|b'.*?'")


@dataclass(frozen=True)
class ProxyConnection:
    """One connection the proxy made on a client's behalf (from its log)."""

    protocol: str
    """The listener's protocol as pproxy names it: "http", "socks4", "socks5"."""
    client: str
    """The client's address as the proxy saw it, ``host:port``."""
    host: str
    """The target host exactly as the client asked for it (a name stays a name)."""
    port: int


class ProxyServer:
    """A pproxy process listening on 127.0.0.1 with one protocol.

    ``connections`` lists what the proxy logged, in order; ``rejections``
    counts connections it refused (bad credentials or protocol). Both are
    filled by a reader thread: use `wait_for_connections` /
    `wait_for_rejections` rather than reading them right after a request.
    """

    def __init__(
        self,
        protocol: ProxyProtocol = "socks5",
        *,
        username: str | None = None,
        password: str | None = None,
        tls_cert: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}")
        if protocol == "socks4" and password is not None:
            raise ValueError("SOCKS4 has no password: pass only username (the user id)")
        if protocol != "socks4" and (username is None) != (password is None):
            raise ValueError(f"{protocol} needs both username and password, or neither")
        if tls_cert is not None and protocol != "http":
            raise ValueError("tls_cert makes an https:// proxy: use it with protocol 'http'")
        for value in (username, password):
            if value is not None and (not value or "\n" in value or "\r" in value):
                raise ValueError("username and password must be non-empty single-line strings")
        self.protocol: ProxyProtocol = protocol
        self.username = username
        self.password = password
        self.tls_cert = tls_cert
        """A PEM file (key and certificate chain): the proxy then speaks TLS (https://)."""
        self.host = "127.0.0.1"
        self.port = 0
        self.connections: list[ProxyConnection] = []
        self.rejections = 0
        self.log: list[str] = []
        """Every line pproxy printed, with rejected credentials blanked."""
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._auth_file: str | None = None
        self._cond = threading.Condition()
        self._started = False
        self._failed: str | None = None

    # -- addresses -----------------------------------------------------------

    def proxy_url(
        self,
        scheme: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> str:
        """This proxy's URL with `scheme` (default: the protocol) and credentials.

        Without `username` / `password` the server's own credentials are used;
        pass others to test a rejected login. Credentials are percent-encoded.
        """
        self._check_started()
        user = username if username is not None else self.username
        secret = password if password is not None else self.password
        userinfo = ""
        if user is not None:
            userinfo = quote(user, safe="")
            if secret is not None:
                userinfo += ":" + quote(secret, safe="")
            userinfo += "@"
        return f"{scheme or self.scheme}://{userinfo}{self.host}:{self.port}"

    @property
    def scheme(self) -> str:
        """The scheme of this proxy's URL: the protocol, or "https" for a TLS listener."""
        return "https" if self.tls_cert is not None else self.protocol

    @property
    def url(self) -> str:
        """``scheme://user:password@127.0.0.1:PORT``, ready for ``proxy=``."""
        return self.proxy_url()

    @property
    def address(self) -> str:
        """``scheme://127.0.0.1:PORT``, without credentials."""
        self._check_started()
        return f"{self.scheme}://{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = f"{self.host}:{self.port}" if self._started else "not started"
        auth = ", with auth" if self.username is not None else ""
        return f"ProxyServer({self.scheme}, {state}{auth})"

    # -- what the proxy saw --------------------------------------------------

    def connections_to(self, port: int, host: str | None = None) -> list[ProxyConnection]:
        """The logged connections to `port` (and `host`, when given)."""
        with self._cond:
            return [
                c for c in self.connections if c.port == port and (host is None or c.host == host)
            ]

    def wait_for_connections(
        self, n: int = 1, *, port: int | None = None, host: str | None = None, timeout: float = 10.0
    ) -> bool:
        """Wait until at least `n` connections (to `port` / `host`) were logged."""

        def enough() -> bool:
            found = [
                c
                for c in self.connections
                if (port is None or c.port == port) and (host is None or c.host == host)
            ]
            return len(found) >= n

        with self._cond:
            return self._cond.wait_for(enough, timeout)

    def wait_for_rejections(self, n: int = 1, *, timeout: float = 10.0) -> bool:
        """Wait until the proxy refused at least `n` connections."""
        with self._cond:
            return self._cond.wait_for(lambda: self.rejections >= n, timeout)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> ProxyServer:
        """Start pproxy and wait until it listens; raises RuntimeError if it cannot."""
        if self._process is not None:
            raise RuntimeError("ProxyServer is already started")
        command = [sys.executable, "-u", "-m", "pproxy", "-l", self._listen_uri(), "-v"]
        # Without --auth 0 pproxy lets an IP in for 30 days after one good login.
        command += ["--auth", "0"]
        if self.tls_cert is not None:
            command += ["--ssl", self.tls_cert]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(
            target=self._read_log, name=f"pproxy-{self.protocol}-log", daemon=True
        )
        self._reader.start()
        with self._cond:
            self._cond.wait_for(lambda: self._started or self._failed, self._startup_timeout)
            failed, started = self._failed, self._started
        if not started:
            self.close()
            raise RuntimeError(
                f"pproxy did not start: {failed or 'timed out'}"
                " (is pproxy installed? pip install pproxy)"
            )
        return self

    def close(self) -> None:
        """Stop the process and the log reader; remove the credentials file."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - pproxy ignores TERM
                process.kill()
                process.wait()
            assert self._reader is not None and process.stdout is not None
            self._reader.join(timeout=5)
            process.stdout.close()
        if self._auth_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._auth_file)
            self._auth_file = None

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("ProxyServer is not started")

    def _listen_uri(self) -> str:
        listener = f"{self.protocol}+ssl" if self.tls_cert is not None else self.protocol
        users = self._users()
        if users is None:
            return f"{listener}://{self.host}:0"
        # The credentials go through a private file ("#" + "#path"), not argv,
        # so other users of the machine cannot read them with ps.
        fd, path = tempfile.mkstemp(prefix="chatkit-pproxy-", suffix=".auth")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(users + "\n")
        self._auth_file = path
        return f"{listener}://{self.host}:0##{path}"

    def _users(self) -> str | None:
        if self.username is None:
            return None
        if self.protocol == "socks4":
            return self.username
        return f"{self.username}:{self.password}"

    def _read_log(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for raw in process.stdout:
            self._take_line(raw.rstrip("\n"))
        status = process.wait()
        with self._cond:
            if not self._started:
                last = self.log[-1] if self.log else "no output"
                self._failed = f"the process exited with status {status} ({last})"
            self._cond.notify_all()

    def _take_line(self, line: str) -> None:
        with self._cond:
            self.log.append(_REJECTED_CREDENTIALS.sub("***", line))
            serving = _SERVING.match(line)
            connection = _CONNECTION.match(line)
            if serving and not self._started:
                self.port = int(serving.group(2))
                self._started = True
            elif connection:
                client, target = connection.group(2), connection.group(3)
                host, _, port = target.rpartition(":")
                if port.isdigit():
                    self.connections.append(
                        ProxyConnection(connection.group(1), client, host, int(port))
                    )
            elif line.startswith("Unauthorized"):
                self.rejections += 1
            self._cond.notify_all()


@contextlib.contextmanager
def start_pproxy(
    protocol: ProxyProtocol = "socks5",
    *,
    username: str | None = None,
    password: str | None = None,
    tls_cert: str | None = None,
) -> Iterator[ProxyServer]:
    """A running `ProxyServer` for the ``with`` block; stopped on exit."""
    server = ProxyServer(protocol, username=username, password=password, tls_cert=tls_cert)
    server.start()
    try:
        yield server
    finally:
        server.close()
