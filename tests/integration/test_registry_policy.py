"""Where credentials and requests may go: mirrors, redirects to other hosts, token realms that
redirect, and foreign layer URLs. Peers are aiohttp servers on 127.0.0.1, each on its own port
(so another origin), in front of the real local registry; they record what they were sent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from pycri.image.auth import Credentials, basic_authorization
from pycri.image.manifest import MANIFEST_SIZE_MAX, Descriptor
from pycri.image.reference import parse_reference
from pycri.image.registry import NotFound, RegistryClient, RegistryError, RegistryOptions, TooLarge, Unauthorized
from tests.support.busybox_images import TestImages
from tests.support.registry import LocalRegistry

pytestmark = pytest.mark.integration

USER = ("mirror-user", "mirror-pass")
REFRESH_TOKEN = "refresh-secret"
MIRRORED = "registry.k8s.io/pycri-test/busybox:latest"


class Peer:
    """One HTTP server on 127.0.0.1 that records each request's path and Authorization header."""

    def __init__(self, upstream: str, handler: Handler) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str | None]] = []
        self.url = ""
        self._handler = handler
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def authorizations(self) -> list[str | None]:
        return [authorization for _, authorization in self.requests]

    async def start(self) -> Peer:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _record(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, request.headers.get("Authorization")))
        return await self._handler(self, request)

    async def proxy(self, request: web.Request, path: str | None = None) -> web.Response:
        """The local registry's answer to this GET (its path, or `path`)."""
        assert self._session is not None
        headers = {"Accept": request.headers.get("Accept", "")}
        async with self._session.get(self.upstream + (path or request.path), headers=headers) as upstream:
            copied = {
                name: upstream.headers[name]
                for name in ("Content-Type", "Docker-Content-Digest")
                if name in upstream.headers
            }
            return web.Response(status=upstream.status, body=await upstream.read(), headers=copied)


Handler = Callable[[Peer, web.Request], Awaitable[web.StreamResponse]]
StartPeer = Callable[[Handler], Awaitable[Peer]]


@pytest.fixture
async def peers(
    registry: LocalRegistry,
) -> AsyncIterator[StartPeer]:
    started: list[Peer] = []

    async def start(handler: Handler) -> Peer:
        peer = await Peer(registry.url, handler).start()
        started.append(peer)
        return peer

    yield start
    for peer in started:
        await peer.stop()


@contextlib.asynccontextmanager
async def registry_client(**options: object) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(RegistryOptions(timeout=10, **options)) as client:
        yield client


def basic_challenge() -> web.Response:
    return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="peer"'})


async def basic_auth_registry(peer: Peer, request: web.Request) -> web.StreamResponse:
    if request.headers.get("Authorization") != basic_authorization(*USER):
        return basic_challenge()
    return await peer.proxy(request)


async def proxy(peer: Peer, request: web.Request) -> web.StreamResponse:
    return await peer.proxy(request)


async def test_credentials_reach_a_mirror_only_when_configured(peers: StartPeer, test_images: TestImages) -> None:
    mirror = await peers(basic_auth_registry)
    mirrors = {"registry.k8s.io": [mirror.url]}
    reference = parse_reference(MIRRORED)

    async with registry_client(mirrors=mirrors) as client:
        with pytest.raises(Unauthorized, match="authentication required"):
            await client.resolve(reference, Credentials(*USER))
    assert mirror.authorizations and set(mirror.authorizations) == {None}

    async with registry_client(mirrors=mirrors, mirror_credentials={mirror.url}) as client:
        opted_in = await client.resolve(reference, Credentials(*USER))
    # Credentials that name the mirror's host (AuthConfig.server_address) are its own.
    for_mirror = Credentials.from_auth_config(*USER, server_address=f"http://{mirror.host}/v2/")
    async with registry_client(mirrors=mirrors) as client:
        addressed = await client.resolve(reference, for_mirror)

    assert opted_in.manifest_digest == addressed.manifest_digest == test_images.busybox.manifest_digest
    assert basic_authorization(*USER) in mirror.authorizations


async def test_credentials_for_another_registry_are_not_sent(peers: StartPeer, test_images: TestImages) -> None:
    private = await peers(basic_auth_registry)
    reference = parse_reference(f"{private.host}/pycri-test/busybox:latest")
    elsewhere = Credentials.from_auth_config(*USER, server_address="other.example:5000")
    async with registry_client() as client:
        with pytest.raises(Unauthorized):
            await client.resolve(reference, elsewhere)
    assert set(private.authorizations) == {None}


@pytest.mark.parametrize("status", [302, 307])
async def test_basic_credentials_do_not_follow_a_blob_redirect_to_another_host(
    peers: StartPeer, test_images: TestImages, status: int
) -> None:
    storage = await peers(proxy)

    async def redirecting(peer: Peer, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != basic_authorization(*USER):
            return basic_challenge()
        if "/blobs/" in request.path:
            return web.Response(status=status, headers={"Location": f"{storage.url}{request.path}"})
        return await peer.proxy(request)

    private = await peers(redirecting)
    reference = parse_reference(f"{private.host}/pycri-test/busybox:latest")
    async with registry_client() as client:
        resolved = await client.resolve(reference, Credentials(*USER))
        layer = resolved.layers[0]
        blob = b"".join([chunk async for chunk in client.open_blob(resolved, layer, Credentials(*USER))])

    assert blob == test_images.busybox.image.layers[0].data
    assert storage.requests == [(f"/v2/pycri-test/busybox/blobs/{layer.digest}", None)]


def bearer_registry(realm: str) -> Handler:
    async def handle_with(peer: Peer, request: web.Request) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer token-"):
            challenge = f'Bearer realm="{realm}",service="peer"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        return await peer.proxy(request)

    return handle_with


async def issue_token(peer: Peer, request: web.Request) -> web.StreamResponse:
    return web.json_response({"token": "token-1"})


async def test_a_token_realm_redirect_to_another_host_carries_no_credentials(
    peers: StartPeer, test_images: TestImages
) -> None:
    other_token_service = await peers(issue_token)

    async def redirecting_realm(peer: Peer, request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": f"{other_token_service.url}/token?{request.query_string}"})

    realm = await peers(redirecting_realm)
    private = await peers(bearer_registry(f"{realm.url}/token"))
    reference = parse_reference(f"{private.host}/pycri-test/busybox:latest")

    async with registry_client() as client:
        resolved = await client.resolve(reference, Credentials(*USER))
    assert resolved.manifest_digest == test_images.busybox.manifest_digest
    # The realm the registry named got the basic credentials; the host it redirected to did not.
    assert realm.authorizations == [basic_authorization(*USER)]
    assert other_token_service.authorizations == [None]

    async with registry_client() as client:
        with pytest.raises(Unauthorized, match="identity token is not sent on"):
            await client.resolve(reference, Credentials(identity_token=REFRESH_TOKEN))
    assert [path for path, _ in other_token_service.requests] == ["/token"]


async def test_a_registry_token_never_reaches_a_blob_redirect_to_another_host(
    peers: StartPeer, test_images: TestImages
) -> None:
    storage = await peers(proxy)

    async def redirecting(peer: Peer, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer token-static":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:1/t"'})
        if "/blobs/" in request.path:
            return web.Response(status=302, headers={"Location": f"{storage.url}{request.path}"})
        return await peer.proxy(request)

    private = await peers(redirecting)
    credentials = Credentials(registry_token="token-static")
    async with registry_client() as client:
        resolved = await client.resolve(parse_reference(f"{private.host}/pycri-test/busybox:latest"), credentials)
        blob = b"".join([chunk async for chunk in client.open_blob(resolved, resolved.config, credentials)])

    assert blob == test_images.busybox.image.config
    assert storage.authorizations == [None]


def foreign(layer: Descriptor, *urls: str) -> Descriptor:
    return Descriptor(
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", layer.digest, layer.size, urls=urls
    )


async def test_foreign_urls_of_hosts_not_allowed_are_never_fetched(peers: StartPeer, test_images: TestImages) -> None:
    outside = await peers(proxy)
    busybox = test_images.busybox
    layer = busybox.image.layers[0]
    url = f"{outside.url}/v2/pycri-test/busybox/blobs/{layer.digest}"
    absent = Descriptor(layer.media_type, "sha256:" + "0" * 64, 3, urls=(f"{outside.url}/blob",))

    async with registry_client() as client:
        resolved = await client.resolve(parse_reference(busybox.reference))
        from_registry = b"".join([chunk async for chunk in client.open_blob(resolved, foreign(layer, url))])
        with pytest.raises(NotFound, match=rf"foreign URL {outside.url}/blob .* images.foreign_layer_hosts"):
            [chunk async for chunk in client.open_blob(resolved, absent)]

    assert from_registry == layer.data
    assert outside.requests == []


async def test_an_allowed_foreign_host_may_not_redirect_to_another(peers: StartPeer, test_images: TestImages) -> None:
    internal = await peers(proxy)

    async def redirecting(peer: Peer, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": f"{internal.url}{request.path}"})

    allowed = await peers(redirecting)
    busybox = test_images.busybox
    absent = Descriptor(busybox.image.layers[0].media_type, "sha256:" + "1" * 64, 3, urls=(f"{allowed.url}/b",))
    async with registry_client(foreign_layer_hosts={allowed.host}) as client:
        resolved = await client.resolve(parse_reference(busybox.reference))
        with pytest.raises(RegistryError, match=rf"redirect to {internal.url}/b refused"):
            [chunk async for chunk in client.open_blob(resolved, absent)]

    assert [path for path, _ in allowed.requests] == ["/b"]
    assert internal.requests == []


async def test_a_manifest_over_the_cap_is_refused_before_it_is_parsed(peers: StartPeer) -> None:
    async def huge_manifest(peer: Peer, request: web.Request) -> web.StreamResponse:
        if "/manifests/" not in request.path:
            return web.Response(status=200, text="{}")  # the /v2/ ping
        body = b'{"schemaVersion": 2, "padding": "' + b"x" * (MANIFEST_SIZE_MAX + 1) + b'"}'
        return web.Response(body=body, content_type="application/vnd.oci.image.manifest.v1+json")

    huge = await peers(huge_manifest)
    async with registry_client() as client:  # loopback hosts are plain HTTP
        with pytest.raises(TooLarge, match=f"more than the {MANIFEST_SIZE_MAX}"):
            await client.resolve(parse_reference(f"{huge.host}/big/manifest:latest"))
