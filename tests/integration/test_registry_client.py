"""RegistryClient against the real local registry, and against test peers for tokens and redirects."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pycri.image.auth import Credentials, basic_authorization
from pycri.image.manifest import MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST, Descriptor
from pycri.image.reference import parse_reference
from pycri.image.registry import (
    DigestMismatch,
    NotFound,
    RegistryClient,
    RegistryError,
    RegistryOptions,
    RegistryUnavailable,
    ResolvedImage,
    Unauthorized,
)
from tests.support.busybox_images import PushedImage, TestImages, busybox_layer, push_tagged
from tests.support.oci_images import make_image
from tests.support.registry import LocalRegistry

pytestmark = pytest.mark.integration

PRIVATE_AUTH = ("pycri", "s3cret")
TOKEN_USER = ("tokenuser", "tokenpass")
REFRESH_TOKEN = "refresh-secret"
STATIC_TOKEN = "static-registry-token"


@contextlib.asynccontextmanager
async def registry_client(**options: object) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(RegistryOptions(timeout=10, **options)) as client:  # type: ignore[arg-type]
        yield client


async def read_blob(client: RegistryClient, resolved: ResolvedImage, descriptor: Descriptor, **kwargs: object) -> bytes:
    return b"".join([chunk async for chunk in client.open_blob(resolved, descriptor, **kwargs)])  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("domain", "options", "url", "api_root"),
    [
        ("docker.io", {}, "https://registry-1.docker.io", "https://registry-1.docker.io/v2"),
        ("quay.io", {}, "https://quay.io", "https://quay.io/v2"),
        ("localhost:5000", {}, "http://localhost:5000", "http://localhost:5000/v2"),
        ("127.0.0.1:5000", {}, "http://127.0.0.1:5000", "http://127.0.0.1:5000/v2"),
        ("[::1]:5000", {}, "http://[::1]:5000", "http://[::1]:5000/v2"),
        ("reg.lan:5000", {"plain_http": {"reg.lan:5000"}}, "http://reg.lan:5000", "http://reg.lan:5000/v2"),
        ("reg.lan:5000", {"plain_http": {"reg.lan"}}, "http://reg.lan:5000", "http://reg.lan:5000/v2"),
        ("docker.io", {"mirrors": {"index.docker.io": ["m.lan/hub/"]}}, "https://m.lan/hub", "https://m.lan/hub/v2"),
        ("docker.io", {"mirrors": {"docker.io": ["http://m.lan/x/v2"]}}, "http://m.lan/x/v2", "http://m.lan/x/v2"),
    ],
)
def test_endpoints(domain: str, options: dict[str, object], url: str, api_root: str) -> None:
    [endpoint] = RegistryClient(RegistryOptions(**options)).endpoints(domain)  # type: ignore[arg-type]
    assert (endpoint.url, endpoint.api_root) == (url, api_root)
    assert endpoint.mirror == ("mirrors" in options)


@pytest.mark.parametrize(
    "options",
    [{"platform": "amd64"}, {"max_concurrent_downloads": 0}, {"timeout": 0}],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RegistryClient(RegistryOptions(**options))  # type: ignore[arg-type]


async def test_a_broken_docker_config_fails_the_pull_naming_it(test_images: TestImages, tmp_path: Path) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text("{")
    async with registry_client(docker_config=config_path) as client:
        with pytest.raises(RegistryError, match=f"docker config {config_path}"):
            await client.resolve(parse_reference(test_images.busybox.reference))


async def test_resolves_an_oci_image_by_tag(registry: LocalRegistry, test_images: TestImages) -> None:
    busybox = test_images.busybox
    async with registry_client() as client:
        resolved = await client.resolve(parse_reference(busybox.reference))

    assert resolved.repo_digest == resolved.manifest_digest == busybox.manifest_digest
    assert resolved.manifest == busybox.image.manifest
    assert resolved.media_type == MEDIA_TYPE_OCI_MANIFEST
    assert resolved.config.digest == busybox.config_digest
    assert [layer.digest for layer in resolved.layers] == [layer.digest for layer in busybox.image.layers]
    assert resolved.endpoint.url == registry.url and resolved.index is None


async def test_resolves_a_docker_schema2_image(test_images: TestImages) -> None:
    async with registry_client() as client:
        resolved = await client.resolve(parse_reference(test_images.docker.reference))

    assert resolved.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    assert resolved.manifest_digest == test_images.docker.manifest_digest
    assert resolved.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.mark.parametrize(("platform", "chosen"), [("linux/amd64", "linux/amd64"), ("linux/arm64", "linux/arm64/v8")])
async def test_picks_the_configured_platform_from_an_index(test_images: TestImages, platform: str, chosen: str) -> None:
    multiarch = test_images.multiarch
    async with registry_client(platform=platform) as client:
        resolved = await client.resolve(parse_reference(multiarch.reference))
        marker = await read_blob(client, resolved, resolved.layers[-1])

    assert resolved.repo_digest == multiarch.digest
    assert resolved.manifest_digest == multiarch.platforms[chosen].manifest_digest
    assert resolved.index == multiarch.index.manifest
    assert marker == multiarch.platforms[chosen].image.layers[-1].data


async def test_a_platform_the_index_lacks_is_not_found(registry: LocalRegistry, test_images: TestImages) -> None:
    async with registry_client(platform="linux/s390x") as client:
        with pytest.raises(NotFound, match=r"linux/s390x.*available: linux/amd64, linux/arm64") as raised:
            await client.resolve(parse_reference(test_images.multiarch.reference))
    assert registry.url in str(raised.value)


async def test_resolves_by_digest_and_by_tag_with_digest(test_images: TestImages) -> None:
    busybox = test_images.busybox
    async with registry_client() as client:
        by_digest = await client.resolve(parse_reference(busybox.digest_reference))
        # The digest wins: the tag is carried along but not looked up.
        pinned = await client.resolve(parse_reference(f"{busybox.repository}:no-such-tag@{busybox.manifest_digest}"))
        index = await client.resolve(parse_reference(test_images.multiarch.digest_reference))

    assert by_digest.manifest_digest == pinned.manifest_digest == busybox.manifest_digest
    assert by_digest.reference.tag is None and pinned.reference.tag == "no-such-tag"
    assert index.repo_digest == test_images.multiarch.digest


async def test_streams_blobs_and_verifies_them(test_images: TestImages) -> None:
    layers = test_images.layers
    async with registry_client() as client:
        resolved = await client.resolve(parse_reference(layers.reference))
        blobs = [await read_blob(client, resolved, layer) for layer in resolved.layers]
        config = await read_blob(client, resolved, resolved.config)

    assert blobs == [layer.data for layer in layers.image.layers]
    assert config == layers.image.config


@pytest.mark.parametrize(("size_change", "reason"), [(-1, "more than the"), (1, "got")])
async def test_a_blob_of_the_wrong_size_fails(test_images: TestImages, size_change: int, reason: str) -> None:
    async with registry_client() as client:
        resolved = await client.resolve(parse_reference(test_images.busybox.reference))
        config = resolved.config
        wrong = Descriptor(config.media_type, config.digest, config.size + size_change)
        with pytest.raises(DigestMismatch, match=reason) as raised:
            await read_blob(client, resolved, wrong)
    assert config.digest in str(raised.value) and test_images.busybox.reference in str(raised.value)


async def test_unknown_manifest_names_registry_and_reference(registry: LocalRegistry) -> None:
    reference = parse_reference(f"{registry.host}/pycri-test/absent:v1")
    async with registry_client() as client:
        with pytest.raises(NotFound) as raised:
            await client.resolve(reference)
    assert str(raised.value) == f"pull {reference} from {registry.url}: manifest unknown (404)"


async def test_unknown_blob_is_not_found(test_images: TestImages) -> None:
    async with registry_client() as client:
        resolved = await client.resolve(parse_reference(test_images.busybox.reference))
        with pytest.raises(NotFound, match="blob unknown"):
            await read_blob(client, resolved, Descriptor("x", "sha256:" + "0" * 64, 1))


async def test_a_mirror_serves_its_host_alone(registry: LocalRegistry, test_images: TestImages) -> None:
    mirrors = {"registry.k8s.io": [f"http://127.0.0.1:{closed_port()}", registry.url]}
    async with registry_client(mirrors=mirrors) as client:
        endpoints = client.endpoints("registry.k8s.io")
        resolved = await client.resolve(parse_reference("registry.k8s.io/pycri-test/busybox:latest"))
        blob = await read_blob(client, resolved, resolved.layers[0])
        # One mirror unreachable, the other without the image: the image may exist, so not NotFound.
        with pytest.raises(RegistryUnavailable) as missing:
            await client.resolve(parse_reference("registry.k8s.io/pycri-test/absent:latest"))

    assert [endpoint.url for endpoint in endpoints] == mirrors["registry.k8s.io"]
    assert resolved.endpoint.url == registry.url
    assert resolved.manifest_digest == test_images.busybox.manifest_digest
    assert blob == test_images.busybox.image.layers[0].data
    # Unreachable mirror and a 404 from the other: never a word from registry.k8s.io itself.
    assert "connection failed" in str(missing.value) and "manifest unknown (404)" in str(missing.value)
    assert "https://registry.k8s.io" not in str(missing.value)


async def test_connection_refused_is_unavailable() -> None:
    port = closed_port()
    reference = parse_reference(f"127.0.0.1:{port}/pycri-test/busybox:latest")
    async with registry_client() as client:
        with pytest.raises(RegistryUnavailable, match=rf"pull {reference} from http://127.0.0.1:{port}: connection"):
            await client.resolve(reference)


async def test_a_silent_registry_times_out() -> None:
    hang_up = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hang_up.wait()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RegistryClient(RegistryOptions(timeout=0.5)) as client:
            with pytest.raises(RegistryUnavailable, match="timed out"):
                await client.resolve(parse_reference(f"127.0.0.1:{port}/x:y"))
    finally:
        hang_up.set()
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRegistry, PushedImage]]:
    pytest.importorskip("bcrypt")
    with LocalRegistry(tmp_path_factory.mktemp("private-registry"), auth=PRIVATE_AUTH) as local_registry:
        image = make_image([busybox_layer()], {"Cmd": ["sh"], "Labels": {"private": "yes"}})
        yield local_registry, push_tagged(local_registry.url, "pycri-test/private", ("latest",), image, PRIVATE_AUTH)


async def test_basic_auth(private_registry: tuple[LocalRegistry, PushedImage], tmp_path: Path) -> None:
    local_registry, private = private_registry
    reference = parse_reference(private.reference)
    config_path = tmp_path / "config.json"
    encoded = base64.b64encode(":".join(PRIVATE_AUTH).encode()).decode()
    config_path.write_text(json.dumps({"auths": {f"http://{local_registry.host}": {"auth": encoded}}}))

    async with registry_client() as client:
        resolved = await client.resolve(reference, Credentials(*PRIVATE_AUTH))
        blob = await read_blob(client, resolved, resolved.layers[0], credentials=Credentials(*PRIVATE_AUTH))
        with pytest.raises(Unauthorized, match=rf"pull {reference} from {local_registry.url}: .*\(401\)"):
            await client.resolve(reference, Credentials("pycri", "wrong"))
        with pytest.raises(Unauthorized, match="authentication required"):
            await client.resolve(reference)
    async with registry_client(docker_config=str(config_path)) as client:
        from_config = await client.resolve(reference)

    assert resolved.manifest_digest == from_config.manifest_digest == private.manifest_digest
    assert blob == private.image.layers[0].data


class TokenPeer:
    """A test peer: a bearer-token registry in front of the local one, plus blob storage elsewhere.

    /token hands out tokens for TOKEN_USER (GET, basic auth) or REFRESH_TOKEN (POST, oauth2);
    <prefix>/v2/... wants one of them and proxies to the local registry; blob requests are
    redirected to a second server (another origin) that records what it was sent.
    """

    def __init__(self, upstream: str, prefix: str = "") -> None:
        self.upstream, self.prefix = upstream, prefix
        self.tokens = {STATIC_TOKEN}
        self.token_requests: list[tuple[str, str]] = []
        self.storage_authorizations: list[str | None] = []
        self.corrupt_blobs = False
        self.url = self.storage_url = ""
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> TokenPeer:
        self._session = aiohttp.ClientSession()
        registry_app, storage_app = web.Application(), web.Application()
        registry_app.router.add_route("*", "/token", self._token)
        registry_app.router.add_get(self.prefix + "/v2/{tail:.*}", self._registry)
        storage_app.router.add_get("/{repository:.*}/blobs/{digest}", self._storage)
        self.url = await self._serve(registry_app)
        self.storage_url = await self._serve(storage_app)
        return self

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def _token(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            form = await request.post()
            self.token_requests.append(("POST", str(form.get("scope", ""))))
            if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != REFRESH_TOKEN:
                return web.Response(status=401)
            return web.json_response({"access_token": self._issue(), "expires_in": 300})
        self.token_requests.append(("GET", request.query.get("scope", "")))
        expected = basic_authorization(*TOKEN_USER)
        if request.headers.get("Authorization") != expected or request.query.get("service") != "token-peer":
            return web.Response(status=401)
        return web.json_response({"token": self._issue()})

    def _issue(self) -> str:
        token = f"token-{len(self.tokens)}"
        self.tokens.add(token)
        return token

    async def _registry(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
            repository = tail.rsplit("/", 2)[0]
            challenge = f'Bearer realm="{self.url}/token",service="token-peer",scope="repository:{repository}:pull"'
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED"}]}, status=401, headers={"WWW-Authenticate": challenge}
            )
        if "/blobs/" in tail:
            raise web.HTTPTemporaryRedirect(f"{self.storage_url}/{tail}")
        return await self._proxy(f"/v2/{tail}", request.headers.get("Accept", ""))

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        self.storage_authorizations.append(request.headers.get("Authorization"))
        response = await self._proxy(f"/v2{request.path}", "")
        if self.corrupt_blobs and response.body:
            response.body = bytes([response.body[0] ^ 0xFF]) + response.body[1:]
        return response

    async def _proxy(self, path: str, accept: str) -> web.Response:
        assert self._session is not None
        async with self._session.get(self.upstream + path, headers={"Accept": accept}) as upstream:
            headers = {
                name: upstream.headers[name]
                for name in ("Content-Type", "Docker-Content-Digest")
                if name in upstream.headers
            }
            return web.Response(status=upstream.status, body=await upstream.read(), headers=headers)


@pytest.fixture
async def token_peer(registry: LocalRegistry) -> AsyncIterator[TokenPeer]:
    peer = await TokenPeer(registry.url, prefix="/mirror").start()
    yield peer
    await peer.stop()


async def pull_through_peer(peer: TokenPeer, credentials: Credentials | None) -> tuple[ResolvedImage, list[bytes]]:
    mirror = f"{peer.url}/mirror"
    async with registry_client(mirrors={"registry.k8s.io": [mirror]}, mirror_credentials={mirror}) as client:
        resolved = await client.resolve(parse_reference("registry.k8s.io/pycri-test/layers:latest"), credentials)
        blobs = [await read_blob(client, resolved, layer, credentials=credentials) for layer in resolved.layers]
    return resolved, blobs


async def test_bearer_token_flow_with_basic_credentials(token_peer: TokenPeer, test_images: TestImages) -> None:
    resolved, blobs = await pull_through_peer(token_peer, Credentials(*TOKEN_USER))

    assert resolved.manifest_digest == test_images.layers.manifest_digest
    assert blobs == [layer.data for layer in test_images.layers.image.layers]
    # One token serves the manifest and every blob of the repository.
    assert token_peer.token_requests == [("GET", "repository:pycri-test/layers:pull")]
    # Blobs were redirected to another origin, which never saw the registry's token.
    assert token_peer.storage_authorizations == [None] * len(blobs)


async def test_bearer_token_flow_with_an_identity_token(token_peer: TokenPeer, test_images: TestImages) -> None:
    resolved, _ = await pull_through_peer(token_peer, Credentials(identity_token=REFRESH_TOKEN))

    assert resolved.manifest_digest == test_images.layers.manifest_digest
    assert token_peer.token_requests == [("POST", "repository:pycri-test/layers:pull")]


async def test_a_registry_token_is_used_as_it_is(token_peer: TokenPeer, test_images: TestImages) -> None:
    resolved, _ = await pull_through_peer(token_peer, Credentials(registry_token=STATIC_TOKEN))

    assert resolved.manifest_digest == test_images.layers.manifest_digest
    assert token_peer.token_requests == []


@pytest.mark.parametrize("credentials", [None, Credentials("tokenuser", "wrong"), Credentials(identity_token="bad")])
async def test_a_refused_token_is_unauthorized(token_peer: TokenPeer, credentials: Credentials | None) -> None:
    with pytest.raises(Unauthorized, match=rf"from {token_peer.url}/mirror: token service .* HTTP 401"):
        await pull_through_peer(token_peer, credentials)


async def test_downloads_beyond_the_limit_wait_their_turn(token_peer: TokenPeer, test_images: TestImages) -> None:
    layer = test_images.busybox.image.layers[0]
    reference = parse_reference("registry.k8s.io/pycri-test/busybox:latest")
    credentials = Credentials(*TOKEN_USER)
    mirrors = {"registry.k8s.io": [f"{token_peer.url}/mirror"]}
    mirror_credentials = set(mirrors["registry.k8s.io"])
    async with registry_client(
        mirrors=mirrors, mirror_credentials=mirror_credentials, max_concurrent_downloads=1
    ) as client:
        resolved = await client.resolve(reference, credentials)
        first = client.open_blob(resolved, resolved.layers[0], credentials)
        second = client.open_blob(resolved, resolved.layers[0], credentials)
        first_chunk = await anext(first)
        waiting = asyncio.ensure_future(anext(second))
        # A whole download by another client gives the waiting one every chance to send its request.
        async with registry_client(mirrors=mirrors, mirror_credentials=mirror_credentials) as other_client:
            await read_blob(other_client, resolved, resolved.config, credentials=credentials)
        requests_while_first_runs = len(token_peer.storage_authorizations)
        rest = b"".join([chunk async for chunk in first])
        second_blob = await waiting + b"".join([chunk async for chunk in second])

    assert requests_while_first_runs == 2
    assert first_chunk + rest == second_blob == layer.data
    assert len(token_peer.storage_authorizations) == 3


async def test_corrupt_blob_content_fails_its_digest(token_peer: TokenPeer) -> None:
    token_peer.corrupt_blobs = True
    with pytest.raises(DigestMismatch, match="content has digest"):
        await pull_through_peer(token_peer, Credentials(*TOKEN_USER))


async def test_foreign_layers_come_from_their_urls(token_peer: TokenPeer, test_images: TestImages) -> None:
    busybox = test_images.busybox
    layer = busybox.image.layers[0]
    foreign = Descriptor(
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        layer.digest,
        layer.size,
        urls=(f"{token_peer.storage_url}/pycri-test/busybox/blobs/{layer.digest}",),
    )
    storage_host = token_peer.storage_url.removeprefix("http://")
    async with registry_client(foreign_layer_hosts={storage_host}) as client:
        resolved = await client.resolve(parse_reference(busybox.reference))
        blob = await read_blob(client, resolved, foreign)

    assert blob == layer.data
    assert token_peer.storage_authorizations == [None]
