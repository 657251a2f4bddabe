"""SystemdDbus over a real D-Bus daemon (a private one, started here) against a stand-in for
org.freedesktop.systemd1 that answers as systemd does: a job path, then JobRemoved."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycri.cgroups import SystemdError, TransientUnit

jeepney = pytest.importorskip("jeepney")
from jeepney import DBusAddress, MessageType, new_error, new_method_return, new_signal  # noqa: E402
from jeepney.bus_messages import message_bus  # noqa: E402
from jeepney.io.blocking import open_dbus_connection  # noqa: E402

from pycri.cgroups.dbus import SystemdDbus  # noqa: E402

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon (Debian package dbus-daemon)"),
]

MANAGER = DBusAddress("/org/freedesktop/systemd1", interface="org.freedesktop.systemd1.Manager")
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class StandInSystemd:
    """Owns org.freedesktop.systemd1 on the bus; records each call's member, signature and body."""

    def __init__(self, address: str, job_result: str = "done") -> None:
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.units: set[str] = set()
        self.job_result = job_result
        self._jobs = itertools.count(1)
        self._connection = open_dbus_connection(bus=address)
        self._connection.send_and_get_reply(
            jeepney.new_method_call(message_bus, "RequestName", "su", ("org.freedesktop.systemd1", 0))
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._connection.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                message = self._connection.receive(timeout=0.05)
            except TimeoutError:
                continue
            if message.header.message_type == MessageType.method_call:
                self._answer(message)

    def _answer(self, call: Any) -> None:
        fields = call.header.fields
        member = fields[jeepney.low_level.HeaderFields.member]
        signature = fields.get(jeepney.low_level.HeaderFields.signature, "")
        self.calls.append((member, signature, call.body))
        if member == "Subscribe":
            self._connection.send(new_method_return(call))
            return
        unit = call.body[0]
        if member == "StopUnit" and unit not in self.units:
            self._connection.send(new_error(call, "org.freedesktop.systemd1.NoSuchUnit", "s", (f"{unit} not loaded",)))
            return
        if member == "StartTransientUnit" and unit in self.units:
            self._connection.send(new_error(call, "org.freedesktop.systemd1.UnitExists", "s", (f"{unit} exists",)))
            return
        (self.units.add if member == "StartTransientUnit" else self.units.discard)(unit)
        job_id = next(self._jobs)
        job = f"/org/freedesktop/systemd1/job/{job_id}"
        self._connection.send(new_method_return(call, "o", (job,)))
        self._connection.send(new_signal(MANAGER, "JobRemoved", "uoss", (job_id, job, unit, self.job_result)))


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    socket = tmp_path / "bus"
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket))
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        assert address.startswith("unix:")
        yield address
    finally:
        daemon.kill()
        daemon.wait()


@pytest.fixture
def systemd(bus: str) -> Iterator[StandInSystemd]:
    stand_in = StandInSystemd(bus)
    yield stand_in
    stand_in.close()


def test_a_scope_is_started_with_its_slice_and_pids_and_waited_for(bus: str, systemd: StandInSystemd) -> None:
    client = SystemdDbus(bus)

    client.start_transient_unit(TransientUnit("pycri-conmon-c1.scope", "pycri-pod1.slice", "pycri conmon c1", (42,)))

    member, signature, (name, mode, properties, aux) = systemd.calls[-1]
    assert (member, signature, name, mode, aux) == (
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        "pycri-conmon-c1.scope",
        "fail",
        [],
    )
    values = dict(properties)
    assert values["Slice"] == ("s", "pycri-pod1.slice")
    assert values["PIDs"] == ("au", [42])
    assert values["MemoryAccounting"] == ("b", True)
    assert values["DefaultDependencies"] == ("b", False)
    assert [call[0] for call in systemd.calls] == ["Subscribe", "StartTransientUnit"]


def test_a_slice_has_no_slice_or_pids_property(bus: str, systemd: StandInSystemd) -> None:
    SystemdDbus(bus).start_transient_unit(TransientUnit("pycri-pod1.slice", "", "pycri pod"))

    properties = dict(systemd.calls[-1][2][2])
    assert "Slice" not in properties and "PIDs" not in properties


def test_an_existing_unit_is_reported_by_its_dbus_error(bus: str, systemd: StandInSystemd) -> None:
    client = SystemdDbus(bus)
    unit = TransientUnit("pycri-pod1.slice", "", "pycri pod")
    client.start_transient_unit(unit)

    with pytest.raises(SystemdError) as exists:
        client.start_transient_unit(unit)

    assert exists.value.dbus_error == "org.freedesktop.systemd1.UnitExists"


def test_stop_waits_for_the_job_and_takes_an_unknown_unit(bus: str, systemd: StandInSystemd) -> None:
    client = SystemdDbus(bus)
    client.start_transient_unit(TransientUnit("pycri-pod1.slice", "", "pycri pod"))

    client.stop_unit("pycri-pod1.slice")
    client.stop_unit("pycri-pod1.slice")

    stops = [call for call in systemd.calls if call[0] == "StopUnit"]
    assert stops == [("StopUnit", "ss", ("pycri-pod1.slice", "replace"))] * 2
    assert systemd.units == set()


def test_a_failed_job_is_an_error(bus: str, systemd: StandInSystemd) -> None:
    systemd.job_result = "failed"

    with pytest.raises(SystemdError, match="failed"):
        SystemdDbus(bus).start_transient_unit(TransientUnit("pycri-conmon-c1.scope", "pycri.slice", "conmon", (1,)))
