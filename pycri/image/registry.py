"""Client for the OCI distribution API: resolve references to manifests and stream blobs.

A registry host's endpoints (its mirrors, or the host itself: see endpoints.py) are tried
in order; the next one is tried when one is unreachable or does not have the content.
Blobs come from the endpoint that served the manifest first. Credentials go only where
endpoints.py says they may, and never along a redirect to another origin.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import yarl

from pycri import telemetry
from pycri.image.auth import (
    AuthError,
    Authorizer,
    Credentials,
    RedirectRefused,
    get_following_redirects,
    load_docker_config,
    registry_host_of,
)
from pycri.image.endpoints import Endpoint, EndpointPolicy, RegistryOptions
from pycri.image.manifest import (
    ACCEPTED_MANIFEST_MEDIA_TYPES,
    MANIFEST_SIZE_MAX,
    Descriptor,
    ImageIndex,
    ImageManifest,
    InvalidManifest,
    NoMatchingPlatform,
    digest_of,
    new_hasher,
    parse_manifest,
    parse_platform,
    select_manifest,
)
from pycri.image.reference import Reference

log = logging.getLogger(__name__)

BLOB_CHUNK_SIZE = 256 * 1024
# An index may point at another index; deeper nesting than this is refused.
INDEX_DEPTH_MAX = 4
ERROR_BODY_MAX = 64 * 1024


class RegistryError(Exception):
    """A pull failed; the message names the reference, the endpoint and the cause."""


class NotFound(RegistryError):
    """The registry does not have the manifest or blob (or nothing for our platform)."""


class Unauthorized(RegistryError):
    """The registry refused access, with or without the credentials given."""


class DigestMismatch(RegistryError):
    """Content did not match its digest or size."""


class TooLarge(RegistryError):
    """A manifest, index or config bigger than pycri takes."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached, timed out, or answered with a server error."""


@dataclass(frozen=True)
class ResolvedImage:
    reference: Reference
    endpoint: Endpoint
    # The digest the reference resolved to: the index's for a multi-platform image, else the manifest's.
    repo_digest: str
    manifest_digest: str
    manifest: bytes = field(repr=False)
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    # The index bytes when the reference named an index (their digest is repo_digest).
    index: bytes | None = field(default=None, repr=False)


class RegistryClient:
    """Pulls from registries over one aiohttp session; close it with aclose()."""

    def __init__(self, options: RegistryOptions) -> None:
        if options.max_concurrent_downloads < 1 or options.timeout <= 0:
            raise ValueError("max_concurrent_downloads must be at least 1 and timeout positive")
        self._options = options
        self._platform = parse_platform(options.platform)
        self.policy = EndpointPolicy(options)
        self._downloads = asyncio.Semaphore(options.max_concurrent_downloads)
        self._session: aiohttp.ClientSession | None = None
        self._authorizer: Authorizer | None = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._authorizer = None

    def reconfigure(self, options: RegistryOptions) -> None:
        """Take new mirrors, plain-HTTP hosts, docker config and credential and foreign-URL policy (a
        config reload): each pull looks them up as it goes, so the next lookup sees the new ones. The
        platform, download slots and timeout are fixed for the client's life."""
        fixed = ("platform", "max_concurrent_downloads", "timeout")
        changed = [name for name in fixed if getattr(options, name) != getattr(self._options, name)]
        if changed:
            raise ValueError(f"a registry client cannot change {', '.join(changed)} while it runs")
        self._options = options
        self.policy = EndpointPolicy(options)

    def endpoints(self, domain: str) -> list[Endpoint]:
        return self.policy.endpoints(domain)

    async def resolve(self, reference: Reference, credentials: Credentials | None = None) -> ResolvedImage:
        """Fetch the manifest ``reference`` names, choosing this client's platform from an index."""
        what = f"pull {reference}"
        failures: list[RegistryError] = []
        for endpoint in self.policy.endpoints(reference.domain):
            try:
                resolved = await self._resolve_at(endpoint, reference, credentials, what)
            except (NotFound, RegistryUnavailable) as error:
                log.info("endpoint failed, trying the next", extra={"fields": {"endpoint": str(endpoint)}})
                failures.append(error)
                continue
            log.info(
                "resolved image",
                extra={
                    "fields": {
                        "reference": str(reference),
                        "digest": resolved.repo_digest,
                        "endpoint": str(endpoint),
                    }
                },
            )
            return resolved
        raise _combined(what, failures)

    async def open_blob(
        self, resolved: ResolvedImage, descriptor: Descriptor, credentials: Credentials | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a blob of ``resolved``, verifying its size and digest as it goes.

        The iterator raises RegistryError (DigestMismatch on bad content) from the
        ``async for`` that reads it; the content is verified only once it is
        exhausted without error. Close it early with ``contextlib.aclosing``.
        """
        what = f"fetch {descriptor.digest} of {resolved.reference}"
        async with self._downloads:
            response, source = await self._open_blob_response(resolved, descriptor, credentials, what)
            hasher = new_hasher(descriptor.digest)
            received = 0
            async with response:
                try:
                    async for chunk in response.content.iter_chunked(BLOB_CHUNK_SIZE):
                        received += len(chunk)
                        telemetry.image_bytes_read(len(chunk))
                        if received > descriptor.size:
                            raise DigestMismatch(
                                f"{what} from {source}: more than the {descriptor.size} bytes expected"
                            )
                        hasher.update(chunk)
                        yield chunk
                except (TimeoutError, aiohttp.ClientError) as error:
                    raise RegistryUnavailable(f"{what} from {source}: {_describe(error)}") from error
            if received != descriptor.size:
                raise DigestMismatch(f"{what} from {source}: got {received} of {descriptor.size} bytes")
            actual = f"{descriptor.digest.partition(':')[0]}:{hasher.hexdigest()}"
            if actual != descriptor.digest:
                raise DigestMismatch(f"{what} from {source}: content has digest {actual}")

    async def _resolve_at(
        self, endpoint: Endpoint, reference: Reference, credentials: Credentials | None, what: str
    ) -> ResolvedImage:
        credentials = await self._credentials_for(endpoint, reference, credentials, what)
        data, media_type = await self._fetch_manifest(
            endpoint, reference, reference.manifest_reference, reference.digest, credentials, what
        )
        repo_digest = reference.digest or digest_of(data)
        manifest_digest, parsed, index = repo_digest, _parse(data, media_type, endpoint, what), None
        for _ in range(INDEX_DEPTH_MAX):
            if not isinstance(parsed, ImageIndex):
                break
            index = index or data
            try:
                chosen = select_manifest(parsed, self._platform)
            except NoMatchingPlatform as error:
                raise NotFound(f"{what} from {endpoint}: {error}") from None
            data, media_type = await self._fetch_manifest(
                endpoint, reference, chosen.digest, chosen.digest, credentials, what
            )
            if len(data) != chosen.size:
                raise DigestMismatch(f"{what} from {endpoint}: manifest {chosen.digest} is not {chosen.size} bytes")
            manifest_digest, parsed = chosen.digest, _parse(data, media_type, endpoint, what)
        if not isinstance(parsed, ImageManifest):
            raise RegistryError(f"{what} from {endpoint}: image indexes nested deeper than {INDEX_DEPTH_MAX}")
        return ResolvedImage(
            reference=reference,
            endpoint=endpoint,
            repo_digest=repo_digest,
            manifest_digest=manifest_digest,
            manifest=data,
            media_type=parsed.media_type,
            config=parsed.config,
            layers=parsed.layers,
            index=index,
        )

    async def _fetch_manifest(
        self,
        endpoint: Endpoint,
        reference: Reference,
        tag_or_digest: str,
        expected_digest: str | None,
        credentials: Credentials | None,
        what: str,
    ) -> tuple[bytes, str | None]:
        url = f"{endpoint.api_root}/{reference.path}/manifests/{tag_or_digest}"
        headers = {"Accept": ", ".join(ACCEPTED_MANIFEST_MEDIA_TYPES)}
        response = await self._get(endpoint, url, reference.path, credentials, headers, what)
        async with response:
            data = await _read_limited(response, MANIFEST_SIZE_MAX, f"{what} from {endpoint}")
            announced = response.headers.get("Docker-Content-Digest")
        if expected_digest is not None:
            actual = digest_of(data, expected_digest.partition(":")[0])
            if actual != expected_digest:
                raise DigestMismatch(f"{what} from {endpoint}: manifest has digest {actual}, not {expected_digest}")
        elif announced and announced.startswith("sha256:") and announced != digest_of(data):
            raise DigestMismatch(f"{what} from {endpoint}: manifest does not match its digest {announced}")
        return data, response.headers.get("Content-Type")

    async def _open_blob_response(
        self, resolved: ResolvedImage, descriptor: Descriptor, credentials: Credentials | None, what: str
    ) -> tuple[aiohttp.ClientResponse, str]:
        failures: list[RegistryError] = []
        # Foreign layers live at their own URLs, outside the registry and its authorization.
        refused = [url for url in descriptor.urls if not self.policy.foreign_url_allowed(url)]
        for url in descriptor.urls:
            if url in refused:
                continue
            try:
                return await self._send(url, {}, url, what, may_follow=self.policy.foreign_url_allowed), url
            except (NotFound, RegistryUnavailable, Unauthorized) as error:
                failures.append(error)
        endpoints = [resolved.endpoint] + [
            e for e in self.policy.endpoints(resolved.reference.domain) if e != resolved.endpoint
        ]
        path = resolved.reference.path
        for endpoint in endpoints:
            url = f"{endpoint.api_root}/{path}/blobs/{descriptor.digest}"
            try:
                endpoint_credentials = await self._credentials_for(endpoint, resolved.reference, credentials, what)
                return await self._get(endpoint, url, path, endpoint_credentials, {}, what), str(endpoint)
            except (NotFound, RegistryUnavailable) as error:
                failures.append(error)
        if refused:
            combined = _combined(what, failures)
            raise type(combined)(
                f"{combined}; the layer's foreign URL {refused[0]} was not tried: its host is not in"
                " images.foreign_layer_hosts"
            )
        raise _combined(what, failures)

    async def _get(
        self,
        endpoint: Endpoint,
        url: str,
        repository: str,
        credentials: Credentials | None,
        headers: dict[str, str],
        what: str,
    ) -> aiohttp.ClientResponse:
        """GET ``url``, answering an authorization challenge once; returns a 2xx response to release."""
        authorizer = self._connect()[1]
        scope = f"repository:{repository}:pull"
        try:
            authorization = await authorizer.authorization(endpoint.host, scope, credentials)
            response = await self._send(url, headers, endpoint, what, authorization, raise_401=False)
            if response.status == 401:
                challenges = response.headers.getall("WWW-Authenticate", [])
                response.release()
                authorization = await authorizer.answer_challenge(endpoint.host, scope, credentials, challenges)
                if authorization is None:
                    raise Unauthorized(f"{what} from {endpoint}: authentication required (401)")
                response = await self._send(url, headers, endpoint, what, authorization)
        except AuthError as error:
            error_class = RegistryUnavailable if error.status is None else Unauthorized
            raise error_class(f"{what} from {endpoint}: {error}") from None
        return response

    async def _send(
        self,
        url: str,
        headers: dict[str, str],
        source: Endpoint | str,
        what: str,
        authorization: str | None = None,
        raise_401: bool = True,
        may_follow: Callable[[yarl.URL], bool] | None = None,
    ) -> aiohttp.ClientResponse:
        """One GET, its redirects followed (those ``may_follow`` allows) with Authorization
        sent to ``url``'s origin only."""
        if authorization is not None:
            headers = headers | {"Authorization": authorization}
        try:
            response = await get_following_redirects(self._connect()[0], url, headers, may_follow=may_follow)
        except RedirectRefused as error:
            raise RegistryError(f"{what} from {source}: {error}") from None
        except (TimeoutError, aiohttp.ClientConnectionError) as error:
            raise RegistryUnavailable(f"{what} from {source}: {_describe(error)}") from error
        except aiohttp.ClientError as error:
            raise RegistryError(f"{what} from {source}: {_describe(error)}") from error
        if response.status < 300 or (response.status == 401 and not raise_401):
            return response
        async with response:
            cause = await _error_cause(response)
        message = f"{what} from {source}: {cause}"
        if response.status == 404:
            raise NotFound(message)
        if response.status in (401, 403):
            raise Unauthorized(message)
        if response.status >= 500 or response.status == 429:
            raise RegistryUnavailable(message)
        raise RegistryError(message)

    def _connect(self) -> tuple[aiohttp.ClientSession, Authorizer]:
        """The client's session and authorizer, made on first use (a session needs a running loop)."""
        if self._session is None or self._authorizer is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._options.timeout, sock_read=self._options.timeout
            )
            self._session = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
            self._authorizer = Authorizer(self._session)
        return self._session, self._authorizer

    async def _credentials_for(
        self, endpoint: Endpoint, reference: Reference, credentials: Credentials | None, what: str
    ) -> Credentials | None:
        """What ``endpoint`` may be shown: the given credentials when they are for it, else
        those docker config.json has for its host."""
        if credentials is not None and self.policy.credentials_reach(endpoint, reference, credentials):
            return credentials
        if self._options.docker_config is None:
            return None
        try:
            configured = await asyncio.to_thread(load_docker_config, self._options.docker_config)
        except ValueError as error:
            raise RegistryError(f"{what}: {error}") from None
        return configured.get(registry_host_of(endpoint.host))


def _parse(data: bytes, media_type: str | None, endpoint: Endpoint, what: str) -> ImageManifest | ImageIndex:
    try:
        return parse_manifest(data, media_type)
    except InvalidManifest as error:
        raise RegistryError(f"{what} from {endpoint}: {error}") from None


def _combined(what: str, failures: list[RegistryError]) -> RegistryError:
    """One error for a list of endpoint failures: the first that is not 'not found' sets its class."""
    if not failures:
        return RegistryError(f"{what}: no endpoint to try")
    if len(failures) == 1:
        return failures[0]
    error_class = next((type(f) for f in failures if not isinstance(f, NotFound)), NotFound)
    return error_class(f"{what}: every endpoint failed: " + "; ".join(str(f) for f in failures))


async def _read_limited(response: aiohttp.ClientResponse, limit: int, context: str) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise TooLarge(f"{context}: {response.content_length} bytes is more than the {limit} allowed")
    data = bytearray()
    try:
        async for chunk in response.content.iter_any():
            data += chunk
            if len(data) > limit:
                raise TooLarge(f"{context}: more than the {limit} bytes allowed")
    except (TimeoutError, aiohttp.ClientError) as error:
        raise RegistryUnavailable(f"{context}: {_describe(error)}") from error
    return bytes(data)


async def _error_cause(response: aiohttp.ClientResponse) -> str:
    """'manifest unknown (404)': the registry's error messages when it sent some, else the HTTP reason."""
    try:
        body = b""
        while len(body) < ERROR_BODY_MAX and (chunk := await response.content.read(ERROR_BODY_MAX - len(body))):
            body += chunk
        errors = json.loads(body).get("errors")
        messages = [e.get("message") or str(e.get("code", "")).lower() for e in errors if isinstance(e, dict)]
    except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError, TypeError):
        messages = []
    text = "; ".join(m for m in messages if isinstance(m, str) and m) or (response.reason or "error").lower()
    return f"{text} ({response.status})"


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"connection failed: {error}" if isinstance(error, aiohttp.ClientConnectionError) else str(error)
