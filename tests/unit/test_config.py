import contextlib
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.config import Config, ConfigError, config_to_toml, load_config

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pycri.toml"
    path.write_text(text)
    return path


def test_every_key_has_a_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config == Config()
    assert config.socket == Path("/run/pycri/pycri.sock")
    assert config.cni.bin_dirs == [Path("/usr/lib/cni"), Path("/opt/cni/bin")]
    assert config.handler_root("runc") == Path("/run/pycri/runc")
    assert (config.timeouts.runtime, config.timeouts.conmon_create) == (60.0, 120.0)
    assert (config.timeouts.cni, config.timeouts.stop_exit_wait) == (120.0, 10.0)
    assert (config.runtime.conmon_cgroup, config.runtime.abandoned_create_grace) == ("pod", 120.0)


def test_missing_default_file_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pycri.config.load.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_config(None) == Config()


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_values_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            socket = "/tmp/p.sock"
            [runtime]
            cgroup_driver = "systemd"
            default_handler = "crun"
            [runtime.handlers.crun]
            path = "/usr/bin/crun"
            [images]
            max_concurrent_downloads = 5
            [images.mirrors]
            "registry.k8s.io" = ["http://localhost:5000"]
            """,
        )
    )
    assert config.socket == Path("/tmp/p.sock")
    assert config.runtime.cgroup_driver == "systemd"
    assert config.handler("crun").path == Path("/usr/bin/crun")
    assert config.images.mirrors == {"registry.k8s.io": ["http://localhost:5000"]}
    assert config.images.max_concurrent_downloads == 5


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("sockett = '/x'", "'sockett'"),
        ("[runtime]\ncgroup_drver = 'systemd'", "runtime.cgroup_drver"),
        ("[runtime]\ncgroup_driver = 'upstart'", "runtime.cgroup_driver"),
        ("log_level = 'loud'", "log_level"),
        ("socket = 'relative.sock'", "socket"),
        ("[images]\nmax_concurrent_downloads = 0", "images.max_concurrent_downloads"),
        ("[images]\nmax_concurrent_downloads = '3'", "images.max_concurrent_downloads"),
        ("[images]\nplatform = 'amd64'", "images.platform"),
        ("[cni]\ndefault_subnet = '10.0.0.0/33'", "cni.default_subnet"),
        ("[cni]\nbin_dirs = '/usr/lib/cni'", "cni.bin_dirs"),
        ("[cni]\ninstall_default_config = 1", "cni.install_default_config"),
        ("[runtime]\ndefault_handler = 'kata'", "runtime.default_handler"),
        ("[runtime.handlers.runc]\npaht = '/usr/sbin/runc'", "runtime.handlers.runc.paht"),
        ("[streaming]\nport = 70000", "streaming.port"),
        ("[streaming]\ntoken_ttl = 0", "streaming.token_ttl"),
        ("[streaming]\naddress = 'localhost'", "streaming.address"),
        ("[streaming]\nidle_timeout = 0", "streaming.idle_timeout"),
        ("[streaming]\nidle_timeout = inf", "streaming.idle_timeout"),
        ("[streaming]\nwebsocket_max_message_bytes = 0", "streaming.websocket_max_message_bytes"),
        ("[streaming]\nspdy_max_streams = 0", "streaming.spdy_max_streams"),
        ("[streaming]\nspdy_stream_buffer_bytes = 1024", "streaming.spdy_stream_buffer_bytes"),
        ("[streaming]\ntls_cert_file = '/etc/pycri/cert.pem'", "streaming.tls_cert_file"),
        ("[streaming]\ntls_key_file = 'key.pem'", "streaming.tls_key_file"),
        ("runtime = 3", "runtime"),
        ("[timeouts]\nruntime = 0", "timeouts.runtime"),
        ("[timeouts]\nconmon_create = -1.5", "timeouts.conmon_create"),
        ("[timeouts]\ncni = nan", "timeouts.cni"),
        ("[timeouts]\nstop_exit_wait = inf", "timeouts.stop_exit_wait"),
        ("[timeouts]\nruntime = '60'", "timeouts.runtime"),
        ("[timeouts]\nrunc = 5", "timeouts.runc"),
        ("[runtime]\nabandoned_create_grace = 0", "runtime.abandoned_create_grace"),
        ("[runtime]\nconmon_cgroup = 'conmon'", "runtime.conmon_cgroup"),
        ("[runtime]\nconmon_cgroup = '/pycri'", "runtime.conmon_cgroup"),
        ("[runtime]\nconmon_cgroup = '/'", "runtime.conmon_cgroup"),
        ("[runtime]\ncgroup_driver = 'systemd'\nconmon_cgroup = '/conmon'", "runtime.conmon_cgroup"),
    ],
)
def test_bad_key_or_value_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        load_config(write(tmp_path, text))


def test_streaming_limits_are_read(tmp_path: Path) -> None:
    text = """
        [streaming]
        idle_timeout = 30
        websocket_max_message_bytes = 4096
        spdy_max_streams = 8
        spdy_stream_buffer_bytes = 65536
        tls_cert_file = "/etc/pycri/stream.crt"
        tls_key_file = "/etc/pycri/stream.key"
    """
    streaming = load_config(write(tmp_path, text)).streaming
    assert streaming.idle_timeout == 30.0
    assert (streaming.websocket_max_message_bytes, streaming.spdy_max_streams) == (4096, 8)
    assert streaming.spdy_stream_buffer_bytes == 65536
    assert streaming.tls_cert_file == Path("/etc/pycri/stream.crt")
    assert streaming.tls_key_file == Path("/etc/pycri/stream.key")


def test_streaming_defaults() -> None:
    streaming = Config().streaming
    assert streaming.idle_timeout == 4 * 3600
    assert streaming.websocket_max_message_bytes == 16 * 1024 * 1024
    assert (streaming.spdy_max_streams, streaming.spdy_stream_buffer_bytes) == (128, 256 * 1024)
    assert streaming.tls_cert_file is None and streaming.tls_key_file is None


def test_timeouts_and_conmon_cgroup_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [timeouts]
            runtime = 5
            conmon_create = 30.5
            cni = 45
            stop_exit_wait = 0.5
            [runtime]
            conmon_cgroup = "/system.slice/pycri-conmon"
            abandoned_create_grace = 300
            """,
        )
    )
    assert config.timeouts.runtime == 5.0 and isinstance(config.timeouts.runtime, float)
    assert (config.timeouts.conmon_create, config.timeouts.cni, config.timeouts.stop_exit_wait) == (30.5, 45.0, 0.5)
    assert config.runtime.conmon_cgroup == "/system.slice/pycri-conmon"
    assert config.runtime.abandoned_create_grace == 300.0


def test_systemd_conmon_cgroup_is_a_slice(tmp_path: Path) -> None:
    text = "[runtime]\ncgroup_driver = 'systemd'\ncgroup_parent = 'pycri.slice'\nconmon_cgroup = 'system-conmon.slice'"
    assert load_config(write(tmp_path, text)).runtime.conmon_cgroup == "system-conmon.slice"


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "socket = "))


def test_override_wins(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "log_level = 'info'"), {"log_level": "debug"})
    assert config.log_level == "debug"


def test_printed_config_reads_back_the_same(tmp_path: Path) -> None:
    original = load_config(
        write(
            tmp_path, "[images]\ndocker_config = '/root/.docker/config.json'\n[images.mirrors]\n'gcr.io' = ['http://m']"
        )
    )
    again = load_config(write(tmp_path, config_to_toml(original)))
    assert again == original


toml_scalars = st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.floats(allow_nan=False))


@given(st.dictionaries(st.text(min_size=1, max_size=15), toml_scalars, max_size=4))
def test_arbitrary_tables_load_or_fail_cleanly(table: dict[str, object]) -> None:
    from pycri.config.load import _build

    with contextlib.suppress(ConfigError):
        _build(Config, table, prefix="")


def test_rendered_default_is_valid_toml() -> None:
    rendered = tomllib.loads(config_to_toml(Config()))
    assert rendered["socket"] == "/run/pycri/pycri.sock"
    assert rendered["timeouts"] == {"runtime": 60.0, "conmon_create": 120.0, "cni": 120.0, "stop_exit_wait": 10.0}


def test_image_limits_and_unpack_workers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    limits = config.images.limits
    assert config.images.unpack_workers == 2
    assert (limits.pax_header_max_bytes, limits.path_max_bytes) == (1 << 20, 4096)
    assert (limits.entries_per_layer_max, limits.config_max_bytes) == (1_000_000, 8 << 20)
    assert (limits.layer_unpacked_max_bytes, limits.image_unpacked_max_bytes) == (64 << 30, 128 << 30)
    text = "[images]\nunpack_workers = 4\n[images.limits]\npath_max_bytes = 1024\n"
    config = load_config(write(tmp_path, text))
    assert (config.images.unpack_workers, config.images.limits.path_max_bytes) == (4, 1024)
    assert load_config(write(tmp_path, config_to_toml(config))) == config


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[images]\nunpack_workers = 0", "images.unpack_workers"),
        ("[images.limits]\npax_header_max_bytes = 0", "images.limits.pax_header_max_bytes"),
        ("[images.limits]\nentries_per_layer_max = -1", "images.limits.entries_per_layer_max"),
        ("[images.limits]\nimage_unpacked_max_bytes = '1G'", "images.limits.image_unpacked_max_bytes"),
        ("[images.limits]\nmanifest_max_bytes = 1", "images.limits.manifest_max_bytes"),
    ],
)
def test_bad_image_limits_name_their_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(write(tmp_path, text))
