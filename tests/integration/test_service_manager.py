"""pycri under a Type=notify service manager: READY, WATCHDOG and STOPPING reach NOTIFY_SOCKET,
and no child of pycri (runc, conmon, CNI plugins) sees the service manager's variables."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycri.api import api_pb2
from tests.support.busybox_images import TestImages
from tests.support.daemon import PycriProcess
from tests.support.pods import RUNNING, SLEEP_FOREVER, conmons_of, container_config, node_with_images, workloads_on

pytestmark = pytest.mark.integration

# Only a bound on a hang: a message that never comes fails the test instead of blocking it.
RECEIVE_LIMIT_SECONDS = 60.0
POD_PID = api_pb2.NamespaceMode.POD


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket the test binds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(RECEIVE_LIMIT_SECONDS)

    def receive(self) -> dict[str, str]:
        message = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in message.splitlines())

    def receive_until(self, key: str) -> dict[str, str]:
        while True:
            fields = self.receive()
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(pycri_dir: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(pycri_dir / "notify.sock")
    yield notify
    notify.close()


def test_ready_once_serving_watchdog_pings_and_stopping_on_sigterm(pycri_dir: Path, listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"}
    daemon = PycriProcess(pycri_dir, env=env).start(wait=False)
    try:
        ready = listener.receive_until("READY")
        assert ready["READY"] == "1"
        assert str(daemon.socket) in ready["STATUS"]
        # No waiting for the channel: READY=1 promises the socket already answers.
        reply = daemon.runtime().Version(api_pb2.VersionRequest(), timeout=10)
        assert reply.runtime_name == "pycri"
        assert listener.receive_until("WATCHDOG")["WATCHDOG"] == "1"
        assert daemon.stop() == 0
        assert listener.receive_until("STOPPING")["STOPPING"] == "1"
    finally:
        daemon.stop()


def test_pods_and_containers_run_under_a_notifying_service_manager(
    test_images: TestImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("LISTEN_FDS", "0")
    try:
        with node_with_images(test_images) as node, workloads_on(node) as work:
            assert listener.receive_until("READY")["READY"] == "1"
            config = work.pod_config("notify")
            config.linux.security_context.namespace_options.pid = POD_PID  # a pause container: runc create and start
            pod = work.run_pod(config)
            container = container_config("sleeper", test_images.busybox.reference, *SLEEP_FOREVER)
            container.linux.security_context.namespace_options.pid = POD_PID
            container_id = work.run(pod, container)
            assert work.status(container_id).state == RUNNING
            for conmon in conmons_of(pod):
                assert not {"NOTIFY_SOCKET", "LISTEN_FDS"} & set(conmon.environ())
        assert listener.receive_until("STOPPING")["STOPPING"] == "1"
    finally:
        listener.close()
