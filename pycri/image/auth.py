"""Registry credentials and authorization: CRI AuthConfig, docker config.json, challenges, tokens.

Registries answer an unauthorized request with ``401`` and a ``WWW-Authenticate``
challenge. ``Basic`` wants the credentials on every request; ``Bearer`` names a
token service (realm) that hands out short-lived tokens for a scope such as
``repository:library/busybox:pull``. The Authorizer remembers each host's
challenge and caches tokens, so only the first request to a host pays for
the round trips.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the first pull, not at the daemon's start
    import aiohttp
    import yarl

log = logging.getLogger(__name__)

# Hosts Docker Hub is known by in docker config.json and in references.
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
TOKEN_LIFETIME_MIN = 60.0
# Tokens are refreshed this long before they expire, so a slow request does not carry a dead one.
TOKEN_EXPIRY_MARGIN = 5.0
OAUTH_CLIENT_ID = "pycri"
REDIRECTS_MAX = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
# Unquoted values are tokens by the RFC; servers also send URLs unquoted, so take all up to a comma.
_BARE_VALUE_RE = re.compile(r'[^\s,"]+')
_TOKEN68_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*(?=\s*(?:,|$))")
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True)
class Credentials:
    """What a registry may be shown: a user and password, an identity (refresh) token or a bearer token."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)
    # The registry host they are for (AuthConfig.server_address); empty: the image's registry.
    server: str = ""

    @classmethod
    def from_auth_config(
        cls,
        username: str = "",
        password: str = "",
        auth: str = "",
        identity_token: str = "",
        registry_token: str = "",
        server_address: str = "",
    ) -> Credentials | None:
        """Credentials from the fields of a CRI AuthConfig; None when all secrets are empty."""
        if auth and not (username or password):
            username, password = decode_basic_auth(auth)
        server = registry_host_of(server_address) if server_address.strip() else ""
        credentials = cls(username, password, identity_token, registry_token, server)
        return credentials if credentials != cls(server=server) else None


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: the scheme (lowercase) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict, hash=False)


class RedirectRefused(Exception):
    """A redirect pycri does not follow: to a host it may not reach, not HTTP(S), or too many."""


async def get_following_redirects(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
    may_follow: Callable[[yarl.URL], bool] | None = None,
) -> aiohttp.ClientResponse:
    """GET ``url`` and follow its redirects (those ``may_follow`` allows). The Authorization
    header goes to ``url``'s origin (scheme, host and port) only: once a redirect leaves it,
    the rest of the chain gets none. Returns the first response that is no redirect."""
    import yarl

    origin = yarl.URL(url).origin()
    target = yarl.URL(url)
    for _ in range(REDIRECTS_MAX + 1):
        response = await session.get(target, headers=headers, params=params, allow_redirects=False)
        location = response.headers.get("Location")
        if response.status not in REDIRECT_STATUSES or not location:
            return response
        response.release()
        try:
            target = target.join(yarl.URL(location))
        except ValueError:
            raise RedirectRefused(f"{target} redirected to {location!r}, which is no URL") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise RedirectRefused(f"redirect to {location!r} refused: not an HTTP(S) URL")
        if may_follow is not None and not may_follow(target):
            raise RedirectRefused(
                f"redirect to {target.with_query(None)} refused: host {target.raw_authority} not allowed"
            )
        params = None
        if target.origin() != origin:
            headers = {name: value for name, value in headers.items() if name.lower() != "authorization"}
    raise RedirectRefused(f"{url}: more than {REDIRECTS_MAX} redirects")


class AuthError(Exception):
    """Authorization failed; ``status`` is the token service's HTTP status, None when it was unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def decode_basic_auth(auth: str) -> tuple[str, str]:
    """Split a base64 ``user:password`` string (the ``auth`` field of CRI and docker config)."""
    try:
        decoded = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("auth is not base64-encoded 'user:password'") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise ValueError("auth does not decode to 'user:password'")
    return username, password


def basic_authorization(username: str, password: str) -> str:
    """The Authorization header value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def registry_host_of(key: str) -> str:
    """The host a docker config.json ``auths`` key stands for ("https://index.docker.io/v1/" -> docker.io)."""
    host = key.strip().lower().removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    return "docker.io" if host in DOCKER_HUB_ALIASES else host


def load_docker_config(path: str | Path) -> dict[str, Credentials]:
    """Credentials by registry host from a docker-style config.json; {} when the file does not exist."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"docker config {path}: {error}") from None
    auths = document.get("auths", {}) if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        raise ValueError(f"docker config {path}: 'auths' is not an object")
    credentials_by_host: dict[str, Credentials] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise ValueError(f"docker config {path}: entry {key!r} is not an object")
        try:
            credentials = Credentials.from_auth_config(
                username=_string(entry, "username"),
                password=_string(entry, "password"),
                auth=_string(entry, "auth"),
                identity_token=_string(entry, "identitytoken"),
                registry_token=_string(entry, "registrytoken"),
            )
        except ValueError as error:
            raise ValueError(f"docker config {path}: entry {key!r}: {error}") from None
        host = registry_host_of(key)
        # The canonical "https://index.docker.io/v1/" style key wins over a bare alias written later.
        if credentials is not None and (host not in credentials_by_host or "://" in key):
            credentials_by_host[host] = credentials
    return credentials_by_host


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate header into its challenges; unparseable tails are dropped."""
    challenges: list[Challenge] = []
    position = _skip_separators(header, 0)
    while position < len(header):
        scheme = _TOKEN_RE.match(header, position)
        if scheme is None:
            break
        challenge = Challenge(scheme.group().lower())
        challenges.append(challenge)
        position = scheme.end()
        token68 = _TOKEN68_RE.match(header, _skip_spaces(header, position))
        if token68 is not None:
            challenge.params[""] = token68.group()
            position = token68.end()
        while True:
            position = _skip_separators(header, position)
            if not _is_parameter(header, position):
                break
            name = _TOKEN_RE.match(header, position)
            assert name is not None  # _is_parameter saw it
            position = _skip_spaces(header, name.end()) + 1
            position = _skip_spaces(header, position)
            quoted = _QUOTED_RE.match(header, position)
            value = _BARE_VALUE_RE.match(header, position) if quoted is None else None
            if quoted is not None:
                challenge.params[name.group().lower()] = _ESCAPE_RE.sub(r"\1", quoted.group(1))
                position = quoted.end()
            elif value is not None:
                challenge.params[name.group().lower()] = value.group()
                position = value.end()
            else:
                challenge.params[name.group().lower()] = ""
    return challenges


class Authorizer:
    """Authorization header values per (host, scope, credentials), learned from challenges."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._challenges: dict[str, Challenge] = {}
        self._cache: dict[tuple[str, str, Credentials | None], tuple[str, float]] = {}

    async def authorization(self, host: str, scope: str, credentials: Credentials | None) -> str | None:
        """The header to send up front, when an earlier challenge from ``host`` says what it wants."""
        challenge = self._challenges.get(host)
        if challenge is None:
            return None
        return await self._authorize(host, challenge, scope, credentials)

    async def answer_challenge(
        self, host: str, scope: str, credentials: Credentials | None, header_values: list[str]
    ) -> str | None:
        """The header to retry with after a 401 carrying ``header_values``; None when none can help."""
        challenges = [c for value in header_values for c in parse_www_authenticate(value)]
        by_scheme = {c.scheme: c for c in reversed(challenges)}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        if challenge is None:
            return None
        self._challenges[host] = challenge
        self._cache.pop((host, scope, credentials), None)
        return await self._authorize(host, challenge, scope, credentials)

    async def _authorize(
        self, host: str, challenge: Challenge, scope: str, credentials: Credentials | None
    ) -> str | None:
        if challenge.scheme == "basic":
            if credentials is None or not credentials.username:
                return None
            return basic_authorization(credentials.username, credentials.password)
        if credentials is not None and credentials.registry_token:
            return f"Bearer {credentials.registry_token}"
        key = (host, scope, credentials)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        token, lifetime = await self._fetch_token(challenge, scope, credentials)
        header = f"Bearer {token}"
        self._cache[key] = (header, time.monotonic() + lifetime - TOKEN_EXPIRY_MARGIN)
        return header

    async def _fetch_token(
        self, challenge: Challenge, scope: str, credentials: Credentials | None
    ) -> tuple[str, float]:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise AuthError(f"bearer challenge has no usable realm ({realm!r})")
        service = challenge.params.get("service")
        query = {"scope": scope} | ({"service": service} if service else {})
        import aiohttp

        try:
            async with self._token_request(realm, query, credentials) as response:
                if response.status != 200:
                    raise AuthError(f"token service {realm} refused {scope!r}: HTTP {response.status}", response.status)
                text = await response.text()
        except RedirectRefused as error:
            raise AuthError(f"token service {realm}: {error}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise AuthError(f"token service {realm} unreachable: {error or type(error).__name__}") from error
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            raise AuthError(f"token service {realm} sent no JSON") from None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"token service {realm} sent no token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else TOKEN_LIFETIME_MIN
        log.debug("fetched registry token", extra={"fields": {"realm": realm, "scope": scope}})
        return token, max(lifetime, TOKEN_LIFETIME_MIN)

    @contextlib.asynccontextmanager
    async def _token_request(
        self, realm: str, query: dict[str, str], credentials: Credentials | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        if credentials is not None and credentials.identity_token:
            form = query | {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": OAUTH_CLIENT_ID,
            }
            # The identity token is in the body, which a 307 would carry anywhere: no redirect is followed.
            async with self._session.post(realm, data=form, allow_redirects=False) as response:
                if response.status in REDIRECT_STATUSES:
                    raise AuthError(f"token service {realm} redirected; the identity token is not sent on", 401)
                yield response
            return
        headers = {}
        if credentials is not None and credentials.username:
            headers["Authorization"] = basic_authorization(credentials.username, credentials.password)
        async with await get_following_redirects(self._session, realm, headers, query) as response:
            yield response


def _string(entry: dict[str, object], name: str) -> str:
    value = entry.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is not a string")
    return value


def _skip_spaces(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t":
        position += 1
    return position


def _skip_separators(text: str, position: int) -> int:
    """Past the whitespace and commas between challenges and parameters."""
    while position < len(text) and (text[position].isspace() or text[position] == ","):
        position += 1
    return position


def _is_parameter(header: str, position: int) -> bool:
    """True when ``name =`` starts at ``position`` (otherwise a new challenge or the end does)."""
    name = _TOKEN_RE.match(header, position)
    if name is None:
        return False
    after = _skip_spaces(header, name.end())
    return after < len(header) and header[after] == "="
