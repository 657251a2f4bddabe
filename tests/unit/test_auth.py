import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.image.auth import (
    Challenge,
    Credentials,
    decode_basic_auth,
    load_docker_config,
    parse_www_authenticate,
    registry_host_of,
)
from pycri.image.endpoints import EndpointPolicy, RegistryOptions
from pycri.image.reference import parse_reference

pytestmark = pytest.mark.unit


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_credentials_from_username_and_password() -> None:
    assert Credentials.from_auth_config(username="u", password="p") == Credentials("u", "p")


def test_credentials_from_the_auth_field() -> None:
    assert Credentials.from_auth_config(auth=b64("user:pa:ss")) == Credentials("user", "pa:ss")


def test_username_and_password_win_over_auth() -> None:
    assert Credentials.from_auth_config(username="u", password="p", auth=b64("x:y")) == Credentials("u", "p")


def test_tokens_are_kept() -> None:
    credentials = Credentials.from_auth_config(identity_token="refresh", registry_token="bearer")
    assert credentials == Credentials(identity_token="refresh", registry_token="bearer")


def test_no_fields_means_no_credentials() -> None:
    assert Credentials.from_auth_config() is None


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Credentials("user", "hunter2", "idtoken", "regtoken"))
    assert "user" in text
    assert "hunter2" not in text and "idtoken" not in text and "regtoken" not in text


@pytest.mark.parametrize("auth", ["not base64!", b64("no-colon"), base64.b64encode(b"\xff:\xfe").decode()])
def test_bad_auth_fields_are_refused(auth: str) -> None:
    with pytest.raises(ValueError, match="auth"):
        decode_basic_auth(auth)


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("http://localhost:5000", "localhost:5000"),
        ("https://Quay.io/v2/", "quay.io"),
        ("registry.k8s.io", "registry.k8s.io"),
    ],
)
def test_docker_config_keys_name_hosts(key: str, host: str) -> None:
    assert registry_host_of(key) == host


def write_config(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return path


def test_loads_docker_config(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
                "localhost:5000": {"username": "u", "password": "p"},
                "https://quay.io": {"auth": "", "identitytoken": "refresh-me"},
                "ghcr.io": {"registrytoken": "bearer-me"},
                "empty.example": {},
            },
            "credsStore": "desktop",
        },
    )

    assert load_docker_config(path) == {
        "docker.io": Credentials("hubuser", "hubpass"),
        "localhost:5000": Credentials("u", "p"),
        "quay.io": Credentials(identity_token="refresh-me"),
        "ghcr.io": Credentials(registry_token="bearer-me"),
    }


def test_the_canonical_docker_hub_key_wins(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {"auths": {"https://index.docker.io/v1/": {"auth": b64("a:1")}, "docker.io": {"auth": b64("b:2")}}},
    )
    assert load_docker_config(path)["docker.io"] == Credentials("a", "1")


def test_missing_docker_config_means_no_credentials(tmp_path: Path) -> None:
    assert load_docker_config(tmp_path / "absent.json") == {}
    assert load_docker_config(write_config(tmp_path, {})) == {}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"auths": []}, "'auths' is not an object"),
        ([], "'auths' is not an object"),
        ({"auths": {"h": "x"}}, "entry 'h' is not an object"),
        ({"auths": {"h": {"auth": "!!"}}}, "entry 'h': auth is not base64"),
        ({"auths": {"h": {"username": 7}}}, "'username' is not a string"),
    ],
)
def test_bad_docker_config_names_the_file(tmp_path: Path, document: object, reason: str) -> None:
    path = write_config(tmp_path, document)
    with pytest.raises(ValueError, match=reason) as raised:
        load_docker_config(path)
    assert str(path) in str(raised.value)


def test_docker_config_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="docker config"):
        load_docker_config(path)


def test_parses_a_bearer_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push"'
    )
    assert parse_www_authenticate(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull,push",
            },
        )
    ]


def test_parses_basic_with_case_and_spaces() -> None:
    [challenge] = parse_www_authenticate('  BASIC   Realm = "pycri test" ')
    assert challenge == Challenge("basic", {"realm": "pycri test"})


def test_parses_several_challenges_in_one_header() -> None:
    header = 'Basic realm="a, b", Bearer realm=https://t.example/token, service=reg , error="invalid_token"'
    assert parse_www_authenticate(header) == [
        Challenge("basic", {"realm": "a, b"}),
        Challenge("bearer", {"realm": "https://t.example/token", "service": "reg", "error": "invalid_token"}),
    ]


def test_parses_escapes_in_quoted_strings() -> None:
    [challenge] = parse_www_authenticate(r'Bearer realm="say \"hi\" \\ there"')
    assert challenge.params["realm"] == 'say "hi" \\ there'


def test_parses_token68_and_bare_schemes() -> None:
    assert parse_www_authenticate("Negotiate abc+/d==, Basic") == [
        Challenge("negotiate", {"": "abc+/d=="}),
        Challenge("basic"),
    ]


def test_an_unterminated_quote_drops_only_that_value() -> None:
    [challenge] = parse_www_authenticate('Bearer service=reg, realm="https://x')
    assert challenge.scheme == "bearer"
    assert challenge.params["service"] == "reg"


@given(st.text(max_size=200))
def test_any_header_parses_without_raising(header: str) -> None:
    for challenge in parse_www_authenticate(header):
        assert challenge.scheme


@given(st.text(alphabet='Bearer Basic realm=",\\ \t', max_size=120))
def test_challenge_like_headers_parse_without_raising(header: str) -> None:
    for challenge in parse_www_authenticate(header):
        assert challenge.scheme == challenge.scheme.lower()


@pytest.mark.parametrize(
    ("server_address", "server"),
    [("", ""), ("https://index.docker.io/v1/", "docker.io"), ("Reg.Example:5000", "reg.example:5000")],
)
def test_credentials_name_the_registry_they_are_for(server_address: str, server: str) -> None:
    credentials = Credentials.from_auth_config("u", "p", server_address=server_address)
    assert credentials == Credentials("u", "p", server=server)
    assert Credentials.from_auth_config(server_address=server_address) is None


MIRROR = "http://mirror.lan:5000/hub"


@pytest.mark.parametrize(
    ("image", "endpoint_location", "mirror_credentials", "server", "reaches"),
    [
        ("reg.example/app:1", "reg.example", set(), "", True),
        ("app:1", "registry-1.docker.io", set(), "", True),  # Docker Hub's endpoint is docker.io's
        ("app:1", "registry-1.docker.io", set(), "https://index.docker.io/v1/", True),
        ("reg.example/app:1", "reg.example", set(), "other.example", False),
        ("reg.example/app:1", MIRROR, set(), "", False),
        ("reg.example/app:1", MIRROR, {MIRROR}, "", True),
        ("reg.example/app:1", MIRROR, {MIRROR + "/"}, "", True),
        ("reg.example/app:1", MIRROR, {"http://mirror.lan:5000/other"}, "", False),
        # Credentials for another registry never reach a mirror, opt-in or not.
        ("reg.example/app:1", MIRROR, {MIRROR}, "other.example", False),
        # Credentials addressed to the mirror's host are its own.
        ("reg.example/app:1", MIRROR, set(), "mirror.lan:5000", True),
        ("reg.example:5000/app:1", "reg.example:5001", set(), "", False),
    ],
)
def test_which_endpoints_credentials_reach(
    image: str, endpoint_location: str, mirror_credentials: set[str], server: str, reaches: bool
) -> None:
    reference = parse_reference(image)
    mirrors = {reference.domain: [MIRROR]} if endpoint_location == MIRROR else {}
    policy = EndpointPolicy(RegistryOptions(mirrors=mirrors, mirror_credentials=mirror_credentials))
    [endpoint] = policy.endpoints(reference.domain if mirrors else endpoint_location)
    credentials = Credentials.from_auth_config("u", "p", server_address=server)
    assert credentials is not None
    assert policy.credentials_reach(endpoint, reference, credentials) is reaches


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cdn.example/layer", True),
        ("http://cdn.example:8080/layer", True),
        ("https://files.example:8443/layer", True),
        ("https://files.example/layer", False),  # only that port is allowed
        ("https://cdn.example.evil/layer", False),
        ("https://evil.example/cdn.example", False),
        ("https://cdn.example@evil.example/layer", False),
        ("ftp://cdn.example/layer", False),
        ("file:///etc/passwd", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("//cdn.example/layer", False),
        ("not a url", False),
    ],
)
def test_foreign_layer_urls_need_an_allowed_host(url: str, allowed: bool) -> None:
    policy = EndpointPolicy(RegistryOptions(foreign_layer_hosts={"cdn.example", "files.example:8443"}))
    assert policy.foreign_url_allowed(url) is allowed


def test_no_foreign_layer_host_is_allowed_by_default() -> None:
    assert not EndpointPolicy(RegistryOptions()).foreign_url_allowed("https://cdn.example/layer")


@given(st.text(max_size=200))
def test_any_foreign_url_is_judged_without_raising(url: str) -> None:
    allowed = EndpointPolicy(RegistryOptions(foreign_layer_hosts={"cdn.example"})).foreign_url_allowed(url)
    assert allowed is False or "cdn.example" in url.lower()
    assert EndpointPolicy(RegistryOptions()).foreign_url_allowed(url) is False
