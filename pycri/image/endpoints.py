"""Which servers a registry client talks to and what each may be shown.

A reference's registry host is served by its endpoints: the mirrors configured
for the host (only those, in order), or else the host itself (Docker Hub is
``registry-1.docker.io``). Credentials go only to the registry they are for
(AuthConfig.server_address, else the image's registry), and to a mirror only when
``mirror_credentials`` names it. A layer's foreign ``urls`` are fetched only from
hosts in ``foreign_layer_hosts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yarl

from pycri.image.auth import Credentials, registry_host_of
from pycri.image.reference import Reference

DOCKER_HUB_ENDPOINT_HOST = "registry-1.docker.io"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass
class RegistryOptions:
    # Registry host -> endpoint URLs ("http://localhost:5000", "https://mirror/prefix"); a host with
    # mirrors is served only by them.
    mirrors: dict[str, list[str]] = field(default_factory=dict)
    # Hosts ("host" or "host:port") reached over plain HTTP; loopback hosts always are.
    plain_http: set[str] = field(default_factory=set)
    platform: str = "linux/amd64"
    docker_config: str | Path | None = None
    # Seconds allowed to connect and between two reads; a long download is never cut short.
    timeout: float = 30.0
    max_concurrent_downloads: int = 3
    # Mirror URLs (as in ``mirrors``) that may be shown the credentials of the registry they serve.
    mirror_credentials: set[str] = field(default_factory=set)
    # Hosts ("host" or "host:port") whose foreign layer URLs may be fetched; none by default.
    foreign_layer_hosts: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Endpoint:
    """One server for a registry host; ``api_root`` is where ``/v2/<repository>/...`` lives."""

    url: str
    host: str
    api_root: str
    mirror: bool

    def __str__(self) -> str:
        return self.url


class EndpointPolicy:
    """Endpoints of registry hosts, and the hosts credentials and foreign layer URLs may reach."""

    def __init__(self, options: RegistryOptions) -> None:
        self._options = options
        self._mirrors = {registry_host_of(host): urls for host, urls in options.mirrors.items()}
        self._mirror_credentials = {self.endpoint(url, mirror=True).url for url in options.mirror_credentials}

    def endpoints(self, domain: str) -> list[Endpoint]:
        """The endpoints serving registry ``domain``, in the order they are tried."""
        mirrors = self._mirrors.get(registry_host_of(domain))
        if mirrors:
            return [self.endpoint(url, mirror=True) for url in mirrors]
        host = DOCKER_HUB_ENDPOINT_HOST if domain == "docker.io" else domain
        return [self.endpoint(host, mirror=False)]

    def credentials_reach(self, endpoint: Endpoint, reference: Reference, credentials: Credentials) -> bool:
        """True when ``credentials`` are for ``endpoint``: its host is theirs, or it is a mirror of
        their registry that mirror_credentials names."""
        registry = registry_host_of(reference.domain)
        owner = credentials.server or registry
        if registry_host_of(endpoint.host) == owner:
            return True
        return endpoint.mirror and owner == registry and endpoint.url in self._mirror_credentials

    def foreign_url_allowed(self, url: str | yarl.URL) -> bool:
        """True for an HTTP(S) URL whose host ("host" or "host:port") is in foreign_layer_hosts."""
        try:
            parsed = yarl.URL(url)
        except ValueError:
            return False
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return False
        allowed = self._options.foreign_layer_hosts
        return parsed.host in allowed or (parsed.raw_authority or "") in allowed

    def endpoint(self, location: str, mirror: bool) -> Endpoint:
        if "://" not in location:
            host = yarl.URL(f"//{location}").host or location
            location = f"{'http' if self._plain_http(location, host) else 'https'}://{location}"
        url = yarl.URL(location)
        host_port = url.raw_authority
        root = url.path.rstrip("/")
        api_root = str(url.with_path(root if root.endswith("/v2") else f"{root}/v2"))
        return Endpoint(url=str(url).rstrip("/"), host=host_port, api_root=api_root, mirror=mirror)

    def _plain_http(self, host_port: str, hostname: str) -> bool:
        plain = self._options.plain_http
        return hostname in LOOPBACK_HOSTS or host_port in plain or hostname in plain
