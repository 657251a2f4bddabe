"""The service manager protocol against a real datagram socket the test listens on."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycri.sdnotify import SERVICE_MANAGER_VARIABLES, ServiceManager

pytestmark = pytest.mark.unit


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_the_variables_are_taken_out_of_the_environment() -> None:
    environ = {name: "1" for name in SERVICE_MANAGER_VARIABLES} | {"NOTIFY_SOCKET": "/run/notify", "PATH": "/bin"}
    environ |= {"INVOCATION_ID": "abc", "WATCHDOG_PID": "42"}
    manager = ServiceManager.from_environment(environ, pid=42)
    assert environ == {"PATH": "/bin", "INVOCATION_ID": "abc"}
    assert manager == ServiceManager("/run/notify", 0.0000005)


@pytest.mark.parametrize(
    ("variables", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    variables: dict[str, str], interval: float | None
) -> None:
    manager = ServiceManager.from_environment({"NOTIFY_SOCKET": "/run/notify", **variables}, pid=7)
    assert manager.watchdog_interval == interval


def test_without_notify_socket_nothing_is_sent_and_no_watchdog_runs() -> None:
    manager = ServiceManager.from_environment({"WATCHDOG_USEC": "1000000"}, pid=1)
    assert manager == ServiceManager()
    assert not manager.ready("serving")
    asyncio.run(asyncio.wait_for(manager.keep_watchdog_fed(), timeout=10))  # returns at once


def test_a_relative_notify_socket_is_ignored() -> None:
    assert ServiceManager.from_environment({"NOTIFY_SOCKET": "notify.sock"}).notify_socket is None


def test_ready_and_stopping_arrive(listening: tuple[socket.socket, str]) -> None:
    sock, address = listening
    manager = ServiceManager.from_environment({"NOTIFY_SOCKET": address})
    assert manager.ready("serving CRI on /run/pycri/pycri.sock")
    assert received(sock) == ["READY=1", "STATUS=serving CRI on /run/pycri/pycri.sock"]
    assert manager.stopping()
    assert received(sock) == ["STOPPING=1", "STATUS=shutting down"]


def test_abstract_socket_address() -> None:
    name = f"pycri-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert ServiceManager(f"@{name}").notify("READY=1")
        assert received(sock) == ["READY=1"]


def test_watchdog_pings_until_cancelled(listening: tuple[socket.socket, str]) -> None:
    sock, address = listening

    async def ping_twice() -> None:
        manager = ServiceManager(address, watchdog_interval=0.01)
        feeding = asyncio.create_task(manager.keep_watchdog_fed())
        for _ in range(2):
            assert await asyncio.to_thread(received, sock) == ["WATCHDOG=1"]
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding

    asyncio.run(ping_twice())


def test_a_gone_manager_is_not_an_error(tmp_path: Path) -> None:
    assert not ServiceManager(str(tmp_path / "nobody.sock")).notify("READY=1")
