"""SystemdBus over D-Bus (jeepney, blocking): StartTransientUnit and StopUnit on
org.freedesktop.systemd1.Manager, each waiting for its job's JobRemoved signal so the cgroup is
made (or gone) when the call returns. One connection per call: these calls are rare, and a
connection never outlives a systemd restart."""

from __future__ import annotations

from collections import deque
from typing import Any

from jeepney import DBusAddress, MatchRule, Message, MessageType, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import HeaderFields

from pycri.cgroups.systemd import SystemdError, TransientUnit

SYSTEMD = DBusAddress(
    "/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1", interface="org.freedesktop.systemd1.Manager"
)
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
JOB_DONE = "done"
CALL_TIMEOUT = 30.0


def unit_properties(unit: TransientUnit) -> list[tuple[str, tuple[str, Any]]]:
    """The a(sv) properties of a transient slice or scope: accounting on (so v1 hosts make its
    cgroup in the controllers the stats read), no default dependencies (pods outlive shutdown ordering)."""
    properties: list[tuple[str, tuple[str, Any]]] = [
        ("Description", ("s", unit.description)),
        ("DefaultDependencies", ("b", False)),
        ("CPUAccounting", ("b", True)),
        ("MemoryAccounting", ("b", True)),
        ("TasksAccounting", ("b", True)),
        ("IOAccounting", ("b", True)),
    ]
    if unit.slice:
        properties.append(("Slice", ("s", unit.slice)))
    if unit.pids:
        properties.append(("PIDs", ("au", list(unit.pids))))
    return properties


class SystemdDbus:
    """`address` is "SYSTEM" (the system bus) or a D-Bus address such as "unix:path=/run/dbus/system_bus_socket"."""

    def __init__(self, address: str = "SYSTEM", timeout: float = CALL_TIMEOUT) -> None:
        self._address = address
        self._timeout = timeout

    def start_transient_unit(self, unit: TransientUnit) -> None:
        call = new_method_call(
            SYSTEMD, "StartTransientUnit", "ssa(sv)a(sa(sv))", (unit.name, "fail", unit_properties(unit), [])
        )
        self._run_job(call, unit.name)

    def stop_unit(self, name: str) -> None:
        try:
            self._run_job(new_method_call(SYSTEMD, "StopUnit", "ss", (name, "replace")), name)
        except SystemdError as error:
            if error.dbus_error != NO_SUCH_UNIT:
                raise

    def _run_job(self, call: Message, unit: str) -> None:
        # No sender in the rule: signals carry systemd's unique bus name, which the local filter cannot resolve.
        removed = MatchRule(type="signal", interface=SYSTEMD.interface, member="JobRemoved", path=SYSTEMD.object_path)
        with open_dbus_connection(bus=self._address) as connection, connection.filter(removed, queue=deque()) as jobs:
            _reply(connection, new_method_call(message_bus, "AddMatch", "s", (removed.serialise(),)), self._timeout)
            # systemd sends job signals only while some client has subscribed.
            _reply(connection, new_method_call(SYSTEMD, "Subscribe"), self._timeout)
            (job,) = _reply(connection, call, self._timeout)
            while True:
                _, path, _, result = connection.recv_until_filtered(jobs, timeout=self._timeout).body
                if path == job:
                    break
        if result != JOB_DONE:
            raise SystemdError(f"systemd job for {unit} ended {result!r}")


def _reply(connection: DBusConnection, call: Message, timeout: float) -> tuple[Any, ...]:
    reply = connection.send_and_get_reply(call, timeout=timeout)
    if reply.header.message_type == MessageType.error:
        name = reply.header.fields.get(HeaderFields.error_name, "")
        detail = reply.body[0] if reply.body else ""
        raise SystemdError(f"{call.header.fields.get(HeaderFields.member)}: {name}: {detail}", dbus_error=name)
    body: tuple[Any, ...] = reply.body
    return body
