"""CNI logic without plugins or root: configs, runtime config, results, cache, chaining."""

from __future__ import annotations

import contextlib
import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.network.cni import (
    BandwidthLimits,
    CniManager,
    CniNotReady,
    DnsSettings,
    IpRange,
    PodAttachment,
    PortMapping,
    capability_args,
    parse_pod_cidrs,
    parse_result,
)
from pycri.network.cni_cache import CachedAttachment, ResultCache, parse_cache_document
from pycri.network.cni_config import (
    LOOPBACK_NETWORK,
    CniConfigError,
    NetworkConfig,
    default_conflist,
    installed_default_config,
    load_default_network,
    parse_network_config,
    shipped_default_conflist,
    with_pod_cidrs,
)
from pycri.network.cni_exec import (
    CniError,
    CniNetwork,
    CniPluginNotFound,
    PluginRunner,
    RuntimeConf,
    error_from_output,
    plugin_env,
    plugin_stdin,
    tolerable_on_delete,
)

pytestmark = pytest.mark.unit


def conflist(name: str = "net", version: str = "1.0.0", **extra: Any) -> str:
    return json.dumps({"cniVersion": version, "name": name, "plugins": [{"type": "bridge"}], **extra})


# -- config parsing and selection --------------------------------------------


def test_single_plugin_config_is_wrapped_into_a_list() -> None:
    network = parse_network_config(json.dumps({"cniVersion": "0.3.1", "name": "old", "type": "bridge", "mtu": 1400}))
    assert network.name == "old"
    assert network.cni_version == "0.3.1"
    assert network.plugins == ({"type": "bridge", "mtu": 1400},)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("[]", "not a JSON object"),
        ("{", "not valid JSON"),
        (json.dumps({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}), "no network name"),
        (json.dumps({"cniVersion": "1.0.0", "name": "bad name", "plugins": [{"type": "x"}]}), "invalid network name"),
        (json.dumps({"name": "n", "plugins": [{"type": "x"}]}), "no cniVersion"),
        (json.dumps({"cniVersion": "9.0.0", "name": "n", "plugins": [{"type": "x"}]}), "unsupported cniVersion"),
        (json.dumps({"cniVersion": "one", "name": "n", "plugins": [{"type": "x"}]}), "invalid CNI version"),
        (json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": []}), "no plugins in list"),
        (json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"mtu": 1}]}), "plugin 0 has no type"),
        (json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}), "invalid type"),
        (json.dumps({"cniVersion": "1.0.0", "name": "n"}), "neither a plugins list nor a plugin type"),
        (conflist(disableCheck="maybe"), "disableCheck must be a boolean"),
    ],
)
def test_invalid_configs_are_rejected_with_a_reason(document: str, reason: str) -> None:
    with pytest.raises(CniConfigError, match=reason):
        parse_network_config(document)


def test_flags_accept_booleans_and_their_strings() -> None:
    network = parse_network_config(conflist(disableCheck=True, disableGC="TRUE"))
    assert network.disable_check and network.disable_gc


def test_cni_versions_list_picks_the_highest_supported() -> None:
    document = {"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "1.1.0", "2.0.0"], "name": "n"}
    document["plugins"] = [{"type": "x"}]
    assert parse_network_config(json.dumps(document)).cni_version == "1.1.0"


def test_first_valid_file_by_name_wins_and_bad_ones_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "00-broken.conflist").write_text("{not json")
    (tmp_path / "05-notes.txt").write_text(conflist("ignored"))
    (tmp_path / "10-second.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "second", "type": "ptp"}))
    (tmp_path / "20-third.conflist").write_text(conflist("third"))
    (tmp_path / "01-dir.conflist").mkdir()
    with caplog.at_level(logging.WARNING):
        network = load_default_network(tmp_path)
    assert network is not None and network.name == "second"
    assert network.source == tmp_path / "10-second.conf"
    assert any("00-broken.conflist" in str(getattr(r, "fields", "")) for r in caplog.records)


def test_no_config_dir_means_no_network(tmp_path: Path) -> None:
    assert load_default_network(tmp_path / "missing") is None


def test_default_config_is_installed_only_when_none_is_valid(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    written = installed_default_config(conf_dir, "10.233.1.0/24", bridge="pycritest0", ipam_data_dir=tmp_path / "ipam")
    assert written == conf_dir / "10-pycri.conflist"
    network = load_default_network(conf_dir)
    assert network is not None and network.name == "pycri" and network.cni_version == "1.0.0"
    bridge, portmap = network.plugins
    assert bridge["bridge"] == "pycritest0"
    assert bridge["ipam"] == {
        "type": "host-local",
        "ranges": [[{"subnet": "10.233.1.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": str(tmp_path / "ipam"),
    }
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    assert installed_default_config(conf_dir, "10.9.0.0/16") is None
    assert [p.name for p in conf_dir.iterdir()] == ["10-pycri.conflist"]


def test_the_shipped_default_is_the_documented_one() -> None:
    shipped = json.loads(shipped_default_conflist())
    assert shipped == default_conflist()
    assert shipped["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.85.0.0/16"}]]
    assert shipped["plugins"][0]["bridge"] == "pycri0"


def test_pod_cidrs_replace_the_ranges_of_pycris_network_only() -> None:
    pycri = parse_network_config(json.dumps(default_conflist("10.85.0.0/16")))
    dual = with_pod_cidrs(pycri, ("10.244.1.0/24", "fd00:1::/64"))
    ipam = dual.plugins[0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert pycri.plugins[0]["ipam"]["ranges"] == [[{"subnet": "10.85.0.0/16"}]]
    other = parse_network_config(conflist("flannel"))
    assert with_pod_cidrs(other, ("10.244.1.0/24",)) is other
    assert with_pod_cidrs(pycri, ()) is pycri


def test_pod_cidr_parsing() -> None:
    assert parse_pod_cidrs("10.244.1.0/24, fd00::/64") == ("10.244.1.0/24", "fd00::/64")
    assert parse_pod_cidrs("") == ()
    with pytest.raises(ValueError):
        parse_pod_cidrs("10.244.1.7/24")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
config_like = st.fixed_dictionaries(
    {},
    optional={
        "cniVersion": st.sampled_from(["1.0.0", "0.4.0", "1.1.0", "2.0", ""]) | json_values,
        "name": st.sampled_from(["net", "bad name", ""]) | json_values,
        "plugins": st.lists(
            st.fixed_dictionaries({}, optional={"type": st.sampled_from(["bridge", ""]) | json_values}), max_size=3
        )
        | json_values,
        "type": json_values,
        "disableCheck": json_values,
        "cniVersions": json_values,
    },
)


@given(st.one_of(config_like.map(json.dumps), st.binary(max_size=64), json_values.map(json.dumps)))
def test_any_input_parses_or_fails_cleanly(data: str | bytes) -> None:
    try:
        network = parse_network_config(data)
    except CniConfigError:
        return
    assert network.name and network.plugins
    assert all(isinstance(p["type"], str) and p["type"] for p in network.plugins)
    assert parse_network_config(json.dumps(network.as_conflist())) == network


# -- what plugins receive ----------------------------------------------------


def pod(**extra: Any) -> PodAttachment:
    return PodAttachment("abc123", Path("/run/x"), "web", "default", "uid-1", **extra)


def test_capability_args_for_a_pod() -> None:
    args = capability_args(
        pod(
            port_mappings=(PortMapping(8080, 80, "TCP"), PortMapping(0, 81), PortMapping(53, 53, "udp", "127.0.0.1")),
            bandwidth=BandwidthLimits(1000, 2000, 3000, 4000),
            dns=DnsSettings(servers=("10.0.0.10",), searches=("svc.local",)),
            ip_ranges=((IpRange("10.1.0.0/24", range_start="10.1.0.10"),),),
            cgroup_path="/kubepods/pod1",
            annotations={"a": "b"},
        )
    )
    assert args == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ],
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 2000, "egressRate": 3000, "egressBurst": 4000},
        "ipRanges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10"}]],
        "dns": {"servers": ["10.0.0.10"], "searches": ["svc.local"], "options": []},
        "cgroupPath": "/kubepods/pod1",
        "io.kubernetes.cri.pod-annotations": {"a": "b"},
    }
    assert capability_args(pod()) == {}


def test_plugins_get_only_the_capabilities_they_declare() -> None:
    plugin = {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}}
    args = {"portMappings": [{"hostPort": 1}], "bandwidth": {"ingressRate": 1}, "dns": {}}
    conf = plugin_stdin("net", "1.0.0", plugin, None, args)
    assert conf["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert conf["name"] == "net" and conf["cniVersion"] == "1.0.0" and "prevResult" not in conf
    assert "runtimeConfig" not in plugin_stdin("net", "1.0.0", {"type": "bridge"}, None, args)


def test_prev_result_is_labelled_with_the_plugins_version() -> None:
    conf = plugin_stdin("net", "1.0.0", {"type": "x"}, {"cniVersion": "1.1.0", "ips": []})
    assert conf["prevResult"] == {"cniVersion": "1.0.0", "ips": []}


def test_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNI_ARGS", "leaked=1")
    monkeypatch.setenv("PATH", "/usr/bin")
    runtime = RuntimeConf("abc", "", "eth0", (("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web")))
    env = plugin_env("DEL", [Path("/a"), Path("/b")], runtime)
    assert env["CNI_COMMAND"] == "DEL" and env["CNI_PATH"] == "/a:/b" and env["CNI_NETNS"] == ""
    assert env["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=web"
    assert env["PATH"] == "/usr/bin"
    status_env = plugin_env("STATUS", [Path("/a")], None)
    assert "CNI_ARGS" not in status_env and "CNI_CONTAINERID" not in status_env


@pytest.mark.parametrize(
    "runtime",
    [
        RuntimeConf("", "/n", "eth0"),
        RuntimeConf("bad id", "/n", "eth0"),
        RuntimeConf("ok", "/n", "a-very-long-ifname"),
        RuntimeConf("ok", "/n", "et/h0"),
        RuntimeConf("ok", "/n", "eth0", (("K8S_POD_NAME", "a;b"),)),
    ],
)
def test_invalid_runtime_arguments_are_refused(runtime: RuntimeConf) -> None:
    with pytest.raises(ValueError):
        runtime.validate()


# -- errors and results -----------------------------------------------------


def test_error_json_becomes_a_cni_error() -> None:
    out = json.dumps({"cniVersion": "1.0.0", "code": 7, "msg": "bad config", "details": "no ipam"}).encode()
    error = error_from_output("bridge", "ADD", out, b"", 1)
    fields = (error.plugin, error.command, error.code, error.msg, error.details)
    assert fields == ("bridge", "ADD", 7, "bad config", "no ipam")
    assert "bridge" in str(error) and "ADD" in str(error) and "code 7" in str(error)
    text_error = error_from_output("x", "DEL", b"", b"panic: boom\n", 2)
    assert text_error.msg == "panic: boom" and text_error.code is None


def test_which_delete_errors_are_tolerated() -> None:
    assert tolerable_on_delete(CniError("p", "DEL", "gone", code=3))
    assert tolerable_on_delete(CniError("p", "DEL", "failed: link not found"))
    assert not tolerable_on_delete(CniError("p", "DEL", "iptables busy", code=11))
    assert not tolerable_on_delete(CniPluginNotFound("bridge", "DEL", [Path("/x")]))


def test_missing_plugin_error_names_it_and_the_dirs(tmp_path: Path) -> None:
    with pytest.raises(CniPluginNotFound, match=rf"'nosuch' not found in {tmp_path}/a, {tmp_path}/b"):
        PluginRunner([tmp_path / "a", tmp_path / "b"]).find("nosuch")


def test_result_1_0_ips_on_the_pod_interface_ipv4_first() -> None:
    raw = {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa"},
            {"name": "eth0", "mac": "bb", "sandbox": "/run/netns/x"},
        ],
        "ips": [
            {"address": "fd00::5/64", "interface": 1},
            {"address": "10.1.0.1/24", "interface": 0},
            {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
        ],
    }
    result = parse_result(raw, "eth0")
    assert result.ips == ("10.1.0.5", "fd00::5")
    assert result.primary_ip == "10.1.0.5"
    assert [i.name for i in result.interfaces] == ["cni0", "eth0"]


def test_result_without_interface_indexes_uses_every_ip() -> None:
    raw = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.2.0.9/16"}]}
    assert parse_result(raw, "eth0").ips == ("10.2.0.9",)


def test_result_0_2_0() -> None:
    raw = {"cniVersion": "0.2.0", "ip4": {"ip": "10.3.0.4/24"}, "ip6": {"ip": "fd00::4/64"}}
    assert parse_result(raw, "eth0").ips == ("10.3.0.4", "fd00::4")


def test_unreadable_result_is_a_cni_error() -> None:
    with pytest.raises(CniError, match="unreadable result"):
        parse_result({"ips": [{"address": "not an ip"}]}, "eth0", "bridge")


# -- cache --------------------------------------------------------------------


def test_cache_round_trip(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    network = parse_network_config(conflist("net", disableGC=True))
    runtime = RuntimeConf("abc", "/run/ns/abc", "eth0", (("K8S_POD_NAME", "web"),), {"portMappings": [{"hostPort": 1}]})
    result = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    cache.write(CachedAttachment(network, runtime, result), CachedAttachment(LOOPBACK_NETWORK, runtime, {}))
    path = tmp_path / "results" / "net-abc-eth0"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["kind"] == "cniCacheV1" and document["networkName"] == "net"
    assert document["cniArgs"] == [["K8S_POD_NAME", "web"]]
    loaded = cache.read("net", "abc", "eth0")
    assert loaded == CachedAttachment(network, runtime, result)
    assert [e.network.name for e in cache.attachments("abc")] == ["cni-loopback", "net"]
    assert cache.attachments("ab") == []
    cache.remove("net", "abc", "eth0")
    cache.remove("net", "abc", "eth0")
    assert cache.read("net", "abc", "eth0") is None
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]


def test_bad_cache_files_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = ResultCache(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "net-abc-eth0").write_text('{"kind": "cniCacheV1", "config": "!!"}')
    with caplog.at_level(logging.WARNING):
        assert cache.read("net", "abc", "eth0") is None
        assert cache.attachments() == []
    assert "unreadable CNI cache file" in caplog.text


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_cache_file_parses_or_fails_cleanly(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_cache_document(data)


# -- chaining through stand-in plugins ------------------------------------------


def fake_plugin(bin_dir: Path, name: str, output: dict[str, Any] | None, exit_code: int = 0) -> None:
    """A plugin that records its stdin and environment and prints `output`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    printed = json.dumps(output) if output is not None else ""
    script.write_text(
        "#!/bin/sh\n"
        f'cat > "{bin_dir}/{name}.$CNI_COMMAND.stdin"\n'
        f'env | grep ^CNI_ | sort > "{bin_dir}/{name}.$CNI_COMMAND.env"\n'
        f'echo "{name} $CNI_COMMAND" >> "{bin_dir}/calls.log"\n'
        f"printf '%s' '{printed}'\n"
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)


def recorded(bin_dir: Path, name: str, command: str) -> dict[str, Any]:
    return json.loads((bin_dir / f"{name}.{command}.stdin").read_text())


RESULT_A = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/n"}],
    "ips": [{"address": "10.0.0.2/24", "interface": 0}],
}
RESULT_B = {**RESULT_A, "dns": {"nameservers": ["10.0.0.10"]}}


async def test_add_chains_results_and_delete_runs_in_reverse(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_plugin(bin_dir, "first", RESULT_A)
    fake_plugin(bin_dir, "second", RESULT_B)
    network = NetworkConfig(
        "chain",
        "1.0.0",
        ({"type": "first", "k": 1}, {"type": "second", "capabilities": {"portMappings": True}}),
    )
    capabilities = {"portMappings": [{"hostPort": 9}], "dns": {}}
    runtime = RuntimeConf("abc", "/n", "eth0", (("IgnoreUnknown", "1"),), capabilities)
    chain = CniNetwork(network, PluginRunner([bin_dir]))
    assert await chain.add(runtime) == RESULT_B
    first, second = recorded(bin_dir, "first", "ADD"), recorded(bin_dir, "second", "ADD")
    assert first == {"type": "first", "k": 1, "name": "chain", "cniVersion": "1.0.0"}
    assert second["prevResult"] == RESULT_A
    assert second["runtimeConfig"] == {"portMappings": [{"hostPort": 9}]}
    env = (bin_dir / "first.ADD.env").read_text().splitlines()
    assert "CNI_CONTAINERID=abc" in env and "CNI_IFNAME=eth0" in env and "CNI_ARGS=IgnoreUnknown=1" in env

    await chain.delete(runtime, RESULT_B)
    calls = (bin_dir / "calls.log").read_text().splitlines()
    assert calls == ["first ADD", "second ADD", "second DEL", "first DEL"]
    assert recorded(bin_dir, "first", "DEL")["prevResult"] == RESULT_B


async def test_a_1_1_network_drives_1_0_plugins_at_1_0_and_skips_their_gc(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_plugin(bin_dir, "old", {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0"]})
    network = NetworkConfig("n", "1.1.0", ({"type": "old"},))
    chain = CniNetwork(network, PluginRunner([bin_dir]))
    await chain.status()
    assert not (bin_dir / "old.STATUS.stdin").exists()
    await chain.gc([("abc", "eth0")])
    assert not (bin_dir / "old.GC.stdin").exists()
    await chain.delete(RuntimeConf("abc", "", "eth0"), {"cniVersion": "1.1.0"})
    sent = recorded(bin_dir, "old", "DEL")
    assert sent["cniVersion"] == "1.0.0" and sent["prevResult"]["cniVersion"] == "1.0.0"


async def test_a_1_1_plugin_gets_status_and_gc(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_plugin(bin_dir, "new", {"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]})
    chain = CniNetwork(NetworkConfig("n", "1.1.0", ({"type": "new"},)), PluginRunner([bin_dir]))
    await chain.status()
    assert recorded(bin_dir, "new", "STATUS")["cniVersion"] == "1.1.0"
    await chain.gc([("abc", "eth0")])
    assert recorded(bin_dir, "new", "GC")["cni.dev/valid-attachments"] == [{"containerID": "abc", "ifname": "eth0"}]


async def test_status_reports_a_plugin_that_cannot_speak_the_version(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_plugin(bin_dir, "ancient", {"cniVersion": "1.0.0", "supportedVersions": ["0.3.1"]})
    chain = CniNetwork(NetworkConfig("n", "1.0.0", ({"type": "ancient"},)), PluginRunner([bin_dir]))
    with pytest.raises(CniError, match="does not support config version 1.0.0"):
        await chain.status()


async def test_delete_tolerates_gone_errors_and_runs_past_real_ones(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_plugin(bin_dir, "ipam", None)
    fake_plugin(bin_dir, "gone", {"code": 3, "msg": "container unknown"}, exit_code=1)
    fake_plugin(bin_dir, "busy", {"code": 11, "msg": "try again"}, exit_code=1)
    runner = PluginRunner([bin_dir])
    runtime = RuntimeConf("a", "", "eth0")
    await CniNetwork(NetworkConfig("n", "1.0.0", ({"type": "ipam"}, {"type": "gone"})), runner).delete(runtime, None)
    chain = CniNetwork(NetworkConfig("n", "1.0.0", ({"type": "ipam"}, {"type": "busy"})), runner)
    with pytest.raises(CniError, match=r"busy failed \(DEL\): try again"):
        await chain.delete(runtime, None)
    assert (bin_dir / "calls.log").read_text().splitlines() == ["gone DEL", "ipam DEL", "busy DEL", "ipam DEL"]


async def test_manager_without_config_is_not_ready(tmp_path: Path) -> None:
    manager = CniManager(tmp_path / "net.d", [tmp_path / "bin"], tmp_path / "cache")
    with pytest.raises(CniNotReady, match="no valid CNI network config"):
        await manager.status()
    await manager.delete(pod())  # nothing cached, nothing configured: nothing to do


async def test_manager_status_names_a_missing_plugin(tmp_path: Path) -> None:
    installed_default_config(tmp_path / "net.d")
    manager = CniManager(tmp_path / "net.d", [tmp_path / "bin"], tmp_path / "cache")
    with pytest.raises(CniNotReady, match=r"'bridge' not found in"):
        await manager.status()


async def test_failed_add_is_rolled_back(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_plugin(bin_dir, "bridge", RESULT_A)
    fake_plugin(bin_dir, "portmap", {"code": 7, "msg": "bad"}, exit_code=1)
    fake_plugin(bin_dir, "loopback", {"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}], "ips": []})
    installed_default_config(tmp_path / "net.d")
    manager = CniManager(tmp_path / "net.d", [bin_dir], tmp_path / "cache")
    with pytest.raises(CniError, match="portmap failed"):
        await manager.add(pod())
    assert recorded(bin_dir, "bridge", "DEL")["name"] == "pycri"
    assert recorded(bin_dir, "loopback", "DEL")["name"] == "cni-loopback"
    assert ResultCache(tmp_path / "cache").attachments() == []
