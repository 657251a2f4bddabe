"""SIGHUP reloads the config of a running pycri: live keys apply at once, the others are logged as
needing a restart, and a bad config is refused while the daemon serves on with the old one."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2
from tests.integration.test_service_manager import NotifyListener
from tests.support.busybox_images import TestImages
from tests.support.daemon import PycriProcess
from tests.support.pods import wait_until

pytestmark = pytest.mark.integration

# A registry host nothing listens on: pulls from it fail at once unless a mirror serves it.
DEAD_REGISTRY = "127.0.0.1:9"
RELOADED = "config reloaded"
REFUSED = "config reload refused"


def hang_up(daemon: PycriProcess, settings: dict[str, object], *, expect: str) -> list[str]:
    """Rewrite the config with `settings`, send SIGHUP to the daemon's pid, and wait for the reload's
    log line `expect`; returns the log lines written from the signal on."""
    daemon.settings = settings
    daemon.write_config()
    return signal_and_wait(daemon, expect)


def signal_and_wait(daemon: PycriProcess, expect: str) -> list[str]:
    assert daemon.proc is not None
    start = len(daemon.log_path.read_text().splitlines())
    os.kill(daemon.proc.pid, signal.SIGHUP)

    def new_lines() -> list[str]:
        lines = daemon.log_path.read_text().splitlines()[start:]
        return lines if any(expect in line for line in lines) else []

    return wait_until(new_lines, f"{expect!r} in pycri's log")


def pull(daemon: PycriProcess, image: str) -> str:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
    return daemon.images().PullImage(request, timeout=60).image_ref


@pytest.fixture
def daemon(pycri_dir: Path) -> Iterator[PycriProcess]:
    running = PycriProcess(pycri_dir, {"log_level": "warning"}).start()
    yield running
    running.stop()


def test_new_mirror_and_log_level_apply_without_a_restart(daemon: PycriProcess, test_images: TestImages) -> None:
    image = f"{DEAD_REGISTRY}/pycri-test/busybox:latest"
    with pytest.raises(grpc.RpcError) as failure:
        pull(daemon, image)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "resolved image" not in daemon.log_path.read_text()  # an info line: hidden at warning
    pid = daemon.proc.pid if daemon.proc else 0

    settings = {"log_level": "debug", "images": {"mirrors": {DEAD_REGISTRY: [f"http://{test_images.registry_host}"]}}}
    lines = hang_up(daemon, settings, expect=RELOADED)
    reloaded = next(line for line in lines if RELOADED in line)
    assert "applied=" in reloaded and "images.mirrors" in reloaded and "log_level" in reloaded
    assert "needs_restart=-" in reloaded
    assert any("config key applied" in line and "key=log_level" in line for line in lines)

    assert pull(daemon, image) == test_images.busybox.image_id
    log = daemon.log_path.read_text()
    resolved = [line for line in log.splitlines() if "resolved image" in line]
    assert resolved and f"endpoint=http://{test_images.registry_host}" in resolved[-1]
    daemon.runtime().Version(api_pb2.VersionRequest())
    assert "msg=call" in daemon.log_path.read_text().split(RELOADED, 1)[1]  # debug lines now
    assert daemon.proc is not None and daemon.proc.pid == pid and daemon.proc.poll() is None


def test_a_bad_config_is_refused_and_the_old_one_keeps_serving(daemon: PycriProcess) -> None:
    daemon.config_path.write_text(daemon.config_path.read_text() + 'log_level = "loud"\n[runtime]\nbogus = 1\n')
    lines = signal_and_wait(daemon, REFUSED)
    refused = next(line for line in lines if REFUSED in line)
    assert "level=error" in refused
    assert "log_level" in refused or "bogus" in refused  # the loader's message names the key
    assert daemon.runtime().Version(api_pb2.VersionRequest()).runtime_name == "pycri"

    daemon.config_path.write_text("this is [not toml\n")
    lines = signal_and_wait(daemon, REFUSED)
    assert any("not valid TOML" in line for line in lines)

    # The old config stays whole: a good file afterwards applies against it.
    lines = hang_up(daemon, {"log_level": "info"}, expect=RELOADED)
    assert any("key=log_level" in line and "old=warning" in line and "new=info" in line for line in lines)


def test_keys_that_need_a_restart_are_logged_and_keep_their_running_values(
    daemon: PycriProcess, pycri_dir: Path
) -> None:
    moved = pycri_dir / "moved-root"
    lines = hang_up(daemon, {"log_level": "warning", "root_dir": str(moved)}, expect=RELOADED)
    assert any("needs a restart" in line and "key=root_dir" in line and "level=warning" in line for line in lines)
    assert not moved.exists()
    daemon.runtime().Version(api_pb2.VersionRequest())
    assert (pycri_dir / "root" / "pycri.db").exists()


def test_a_new_runtime_handler_is_served_after_the_reload(daemon: PycriProcess) -> None:
    def handlers() -> list[str]:
        status = daemon.runtime().Status(api_pb2.StatusRequest())
        return sorted(handler.name for handler in status.runtime_handlers)

    assert handlers() == ["", "runc"]
    runtime = {"handlers": {"runc": {"path": "/usr/sbin/runc"}, "crun": {"path": "/usr/bin/crun"}}}
    hang_up(daemon, {"log_level": "info", "runtime": runtime}, expect=RELOADED)
    assert handlers() == ["", "crun", "runc"]


def test_json_logs_after_a_reload_are_one_object_per_line(daemon: PycriProcess) -> None:
    lines = hang_up(daemon, {"log_level": "debug", "log_format": "json"}, expect=RELOADED)
    daemon.runtime().Version(api_pb2.VersionRequest())
    after = daemon.log_path.read_text().split(RELOADED, 1)[1].splitlines()[1:]
    assert after, lines
    parsed = [json.loads(line) for line in after]
    assert all({"time", "level", "logger", "msg"} <= set(entry) for entry in parsed)
    call = next(entry for entry in parsed if entry["msg"] == "call")
    assert call["level"] == "debug" and call["method"].endswith("/Version")


def test_the_service_manager_hears_reloading_then_ready(pycri_dir: Path) -> None:
    listener = NotifyListener(pycri_dir / "notify.sock")
    daemon = PycriProcess(pycri_dir, {"log_level": "info"}, env={"NOTIFY_SOCKET": str(listener.path)}).start()
    try:
        assert listener.receive_until("READY")["READY"] == "1"
        hang_up(daemon, {"log_level": "debug"}, expect=RELOADED)
        reloading = listener.receive_until("RELOADING")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        ready = listener.receive_until("READY")
        assert ready["READY"] == "1" and str(daemon.socket) in ready["STATUS"]
    finally:
        daemon.stop()
        listener.close()
