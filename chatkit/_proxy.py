"""Proxy settings: parse, validate, and pick the proxy for a target URL.

Sans-I/O. The transport asks ``ProxySettings.for_url(url)`` which proxy to use;
``None`` means connect directly, and that answer is only ever given when the
caller configured no explicit proxy at all, mapped the scheme to ``None`` on
purpose, or ``NO_PROXY`` says so. A ``proxies`` dict without an entry for the
target's scheme raises: it never falls back to a direct connection silently.

Precedence: a provider's own settings (``OpenAI(proxy=...)``), else the
call's ``proxy=``, else the client's; only when the winner configures no
proxy at all and ``trust_env`` is on do ``HTTP_PROXY`` / ``HTTPS_PROXY`` /
``ALL_PROXY`` / ``NO_PROXY`` apply.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from chatkit._config import redact_url
from chatkit._errors import ProxyConfigError

__all__ = ["PROXY_SCHEMES", "ProxySettings", "ProxyURL", "SocksOptions"]

PROXY_SCHEMES = frozenset({"http", "https", "socks4", "socks4a", "socks5", "socks5h"})
_PROXIES_KEYS = frozenset({"http", "https", "all"})
# curl's convention: a SOCKS proxy URL without a port means port 1080.
_SOCKS_DEFAULT_PORT = 1080


@dataclass(frozen=True)
class SocksOptions:
    """What a SOCKS connector needs, in plain values (the transport maps them)."""

    version: Literal[4, 5]
    host: str
    port: int
    username: str | None
    password: str | None
    remote_dns: bool
    """True for socks4a/socks5h: the proxy resolves the target's host name."""


@dataclass(frozen=True, repr=False)
class ProxyURL:
    """One proxy. ``str()`` and ``repr()`` never show the credentials."""

    url: str

    @classmethod
    def parse(cls, value: object, field: str) -> ProxyURL:
        if not isinstance(value, str) or not value.strip():
            raise ProxyConfigError(f"{field} must be a proxy URL string", field=field)
        value = value.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ProxyConfigError(
                f"{field}: malformed proxy URL {redact_url(value)!r}", field=field
            ) from None
        if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
            raise ProxyConfigError(
                f"{field}: proxy URL {redact_url(value)!r} needs a scheme among"
                f" {sorted(PROXY_SCHEMES)} and a host",
                field=field,
            )
        if parts.scheme.startswith("socks"):
            _check_socks_credentials(parts.username, parts.password, field)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ProxyConfigError(
                f"{field}: proxy URL {redact_url(value)!r} must not have a path, query or fragment",
                field=field,
            )
        return cls(value)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def is_socks(self) -> bool:
        return self.scheme.startswith("socks")

    @property
    def username(self) -> str | None:
        name = urlsplit(self.url).username
        return unquote(name) if name is not None else None

    @property
    def password(self) -> str | None:
        secret = urlsplit(self.url).password
        return unquote(secret) if secret is not None else None

    @property
    def without_credentials(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return f"{parts.scheme}://{host}{port}"

    def socks_options(self) -> SocksOptions:
        """The SOCKS parameters of this proxy (only meaningful when ``is_socks``).

        socks4 has no password: the user name is sent as the SOCKS4 user id.
        """
        parts = urlsplit(self.url)
        scheme = parts.scheme
        return SocksOptions(
            version=4 if scheme.startswith("socks4") else 5,
            host=parts.hostname or "",
            port=parts.port if parts.port is not None else _SOCKS_DEFAULT_PORT,
            username=self.username,
            password=None if scheme.startswith("socks4") else self.password,
            remote_dns=scheme in ("socks4a", "socks5h"),
        )

    def __str__(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"ProxyURL({redact_url(self.url)!r})"

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in an error message or a log line.

        The password as given and decoded, and the ``Basic`` token an HTTP
        proxy receives (base64 of ``user:password``), which foreign exceptions
        may carry in their request headers.
        """
        raw = urlsplit(self.url).password
        password = self.password
        if not password:
            return ()
        found = {password, quote(password, safe=""), raw or password}
        pair = f"{self.username or ''}:{password}"
        for encoding in ("utf-8", "latin-1"):
            try:
                found.add(base64.b64encode(pair.encode(encoding)).decode("ascii"))
            except UnicodeEncodeError:
                continue
        return tuple(sorted(found, key=len, reverse=True))


def _check_socks_credentials(username: str | None, password: str | None, field: str) -> None:
    # RFC 1929 sends each as one length byte plus the bytes; python-socks
    # encodes them as ASCII.
    for what, value in (("user name", username), ("password", password)):
        if value is None:
            continue
        decoded = unquote(value)
        if not decoded.isascii() or len(decoded) > 255:
            raise ProxyConfigError(
                f"{field}: a SOCKS proxy {what} must be ASCII and at most 255 characters",
                field=field,
            )


@dataclass(frozen=True)
class ProxySettings:
    """Which proxy to use for which target; built from ``proxy=`` / ``proxies=``.

    ``proxies`` maps ``"http"``, ``"https"`` or ``"all"`` (``"http://"``-style
    keys are accepted too) to a proxy URL, or to ``None`` to connect directly
    for that scheme on purpose.
    """

    proxy: ProxyURL | None = None
    proxies: Mapping[str, ProxyURL | None] | None = None
    trust_env: bool = True

    @classmethod
    def create(
        cls, *, proxy: object = None, proxies: object = None, trust_env: object = True
    ) -> ProxySettings:
        if not isinstance(trust_env, bool):
            raise ProxyConfigError("trust_env must be True or False", field="trust_env")
        if proxy is not None and proxies is not None:
            raise ProxyConfigError("pass either proxy= or proxies=, not both", field="proxies")
        if isinstance(proxies, str):
            # g4f accepts a single proxy URL as ``proxies``: one proxy for every scheme.
            proxy, proxies = proxies, None
            field = "proxies"
        else:
            field = "proxy"
        parsed_proxy = ProxyURL.parse(proxy, field) if proxy is not None else None
        parsed_map = _parse_proxies(proxies) if proxies is not None else None
        return cls(proxy=parsed_proxy, proxies=parsed_map, trust_env=trust_env)

    @property
    def explicit(self) -> bool:
        """True when the caller configured a proxy (the environment is then ignored)."""
        return self.proxy is not None or self.proxies is not None

    def for_url(self, url: str) -> ProxyURL | None:
        """The proxy to reach ``url`` through, or None for a direct connection."""
        scheme = urlsplit(url).scheme
        if self.proxy is not None:
            return self.proxy
        if self.proxies is not None:
            for key in (scheme, "all"):
                if key in self.proxies:
                    return self.proxies[key]
            raise ProxyConfigError(
                f"proxies has no entry for {scheme!r} URLs (nor 'all'); refusing to"
                f" connect to {redact_url(url)} directly. Add {scheme!r} (or 'all') to"
                f" proxies, or map it to None to connect directly on purpose",
                field="proxies",
            )
        if self.trust_env:
            return _env_proxy(url, scheme)
        return None

    def secrets(self) -> tuple[str, ...]:
        found: list[str] = []
        for item in [self.proxy, *(self.proxies or {}).values()]:
            if item is not None:
                found.extend(item.secrets())
        return tuple(found)

    def __repr__(self) -> str:
        shown = {k: (str(v) if v is not None else None) for k, v in (self.proxies or {}).items()}
        return f"ProxySettings(proxy={self.proxy!s}, proxies={shown}, trust_env={self.trust_env})"


def _parse_proxies(proxies: object) -> dict[str, ProxyURL | None]:
    if not isinstance(proxies, Mapping) or not proxies:
        raise ProxyConfigError(
            'proxies must be a non-empty dict like {"https": "http://host:port"} or a URL',
            field="proxies",
        )
    parsed: dict[str, ProxyURL | None] = {}
    for key, value in proxies.items():
        name = key.removesuffix("://") if isinstance(key, str) else key
        if name not in _PROXIES_KEYS:
            raise ProxyConfigError(
                f"proxies: unknown key {key!r}; use 'http', 'https' or 'all'",
                field=f"proxies[{key!r}]",
            )
        field = f"proxies[{key!r}]"
        parsed[name] = ProxyURL.parse(value, field) if value is not None else None
    return parsed


def _env_proxy(url: str, scheme: str) -> ProxyURL | None:
    # Read per request, so a variable set after the client was built still
    # counts; two dict lookups per name instead of urllib's scan of the whole
    # environment (~70 us a request), with the same rules.
    variable, value = _env_variable(scheme)
    if value is None:
        variable, value = _env_variable("all")
    if value is None:
        return None
    parts = urlsplit(url)
    no_proxy = _env_variable("no")[1]
    if no_proxy and _bypassed(parts.hostname or "", parts.port, no_proxy):
        return None
    return _parse_env_proxy(value, variable)


def _env_variable(name: str) -> tuple[str, str | None]:
    """``{name}_proxy``'s name and value as urllib reads it, or None when unset or empty.

    The lowercase variable wins over the uppercase one even when empty (so
    ``https_proxy=`` switches an inherited ``HTTPS_PROXY`` off), and
    ``HTTP_PROXY`` is ignored in a CGI request (``REQUEST_METHOD`` set), where
    a client's ``Proxy:`` header would have set it (httpoxy). Unlike urllib,
    mixed-case names (``Http_Proxy``) are not read: finding them means
    scanning the whole environment on every request, and curl ignores them too.
    """
    environ = os.environ
    lower = f"{name}_proxy"
    value = environ.get(lower)
    if value is not None:
        return lower, value or None
    upper = lower.upper()
    if name == "http" and "REQUEST_METHOD" in environ:
        return upper, None
    return upper, environ.get(upper) or None


@functools.lru_cache(maxsize=16)
def _parse_env_proxy(value: str, variable: str) -> ProxyURL:
    if "://" not in value:
        # curl and requests read a bare "host:port" as an HTTP proxy.
        value = f"http://{value}"
    return ProxyURL.parse(value, f"the {variable} environment variable")


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts the host, curl style.

    Entries are comma separated: ``*`` (everything), a domain that matches
    itself and its subdomains (a leading dot is optional), an IP address or
    network (``10.0.0.0/8``), each optionally with ``:port``.
    """
    host = host.lower().strip("[]")
    address = _ip(host)
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        if not entry:
            continue
        entry, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                network = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                continue
            if address in network:
                return True
            continue
        domain = entry.lstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    head, sep, tail = entry.rpartition(":")
    # "::1" and other bare IPv6 literals have colons but no port.
    if sep and tail.isdigit() and (head.endswith("]") or ":" not in head):
        return head, int(tail)
    return entry, None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
