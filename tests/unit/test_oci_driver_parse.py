"""Pure parts of the runc/crun and conmon drivers: arguments, reports, exec processes."""

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.oci.conmon import ConmonCreate, conmon_args, parse_sync_message
from pycri.oci.runtime import (
    ContainerStatus,
    ExecSpec,
    ProcessUser,
    RuntimeHandler,
    exec_process,
    last_error_line,
    parse_state,
)

pytestmark = pytest.mark.unit

CONTAINER_PROCESS = {
    "terminal": True,
    "consoleSize": {"height": 24, "width": 80},
    "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
    "args": ["/bin/server"],
    "env": ["PATH=/bin", "MODE=prod"],
    "cwd": "/srv",
    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]},
    "noNewPrivileges": True,
    "apparmorProfile": "pycri-default",
}


def request(**options: Any) -> ConmonCreate:
    return ConmonCreate(
        container_id="c1",
        name="web",
        bundle=Path("/run/b/c1"),
        runtime=RuntimeHandler("runc", Path("/usr/sbin/runc"), Path("/run/pycri/runc")),
        log_path=Path("/var/log/pods/p/web/0.log"),
        exit_dir=Path("/run/pycri/exits"),
        persist_dir=Path("/var/lib/pycri/containers/c1"),
        socket_dir=Path("/run/pycri/attach"),
        **options,
    )


def test_exec_process_keeps_the_container_security_settings() -> None:
    process = exec_process(CONTAINER_PROCESS, ExecSpec(["/bin/sh", "-c", "true"]))

    assert process["args"] == ["/bin/sh", "-c", "true"]
    assert process["terminal"] is False
    assert "consoleSize" not in process
    for kept in ("user", "env", "cwd", "capabilities", "noNewPrivileges", "apparmorProfile"):
        assert process[kept] == CONTAINER_PROCESS[kept]
    assert CONTAINER_PROCESS["args"] == ["/bin/server"]  # the template is not modified


def test_exec_process_overrides() -> None:
    spec = ExecSpec(["id"], env=["A=1"], cwd="/tmp", user=ProcessUser(5, 6, (7, 8)), tty=True)

    process = exec_process(CONTAINER_PROCESS, spec)

    assert process["env"] == ["A=1", "TERM=xterm"]
    assert process["cwd"] == "/tmp"
    assert process["user"] == {"uid": 5, "gid": 6, "additionalGids": [7, 8]}
    assert process["terminal"] is True


def test_terminal_exec_gets_a_term_unless_it_has_one() -> None:
    inherited = exec_process(CONTAINER_PROCESS, ExecSpec(["sh"], tty=True))
    own = exec_process(CONTAINER_PROCESS, ExecSpec(["sh"], env=["TERM=vt100"], tty=True))
    plain = exec_process(CONTAINER_PROCESS, ExecSpec(["sh"]))

    assert inherited["env"] == ["PATH=/bin", "MODE=prod", "TERM=xterm"]
    assert own["env"] == ["TERM=vt100"]
    assert plain["env"] == CONTAINER_PROCESS["env"]


def test_last_error_line_picks_the_last_error() -> None:
    log = "\n".join(
        [
            json.dumps({"level": "warning", "msg": "ignored"}),
            "not json",
            json.dumps({"level": "error", "msg": "first"}),
            json.dumps({"level": "error", "msg": "exec failed: no such file"}),
            json.dumps({"level": "info", "msg": "later info"}),
        ]
    )

    assert last_error_line(log) == "exec failed: no such file"
    assert last_error_line("") == ""


def test_parse_state() -> None:
    state = parse_state({"id": "c1", "status": "stopped", "pid": 0, "bundle": "/b", "created": "x", "owner": ""})

    assert (state.id, state.status, state.pid, state.bundle) == ("c1", ContainerStatus.STOPPED, 0, Path("/b"))


def test_conmon_args() -> None:
    args = conmon_args(request(stdin=True, log_size_max=1024))

    assert args[:1] == ["--api-version"]
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert flags["--cid"] == flags["--cuuid"] == "c1"
    assert flags["--log-path"] == "k8s-file:/var/log/pods/p/web/0.log"
    assert flags["--container-pidfile"] == "/var/lib/pycri/containers/c1/container.pid"
    assert args.count("--runtime-arg") == 2
    assert "--root=/run/pycri/runc" in args
    assert "--log-format=json" in args
    assert "--log-size-max" in args and "1024" in args
    assert "--stdin" in args and "--leave-stdin-open" in args
    assert "--terminal" not in args


def test_conmon_args_stdin_once_and_tty() -> None:
    args = conmon_args(request(stdin=True, stdin_once=True, tty=True))

    assert "--leave-stdin-open" not in args
    assert "--terminal" in args
    assert "--log-size-max" not in args


def test_sync_message_success_and_failure() -> None:
    runc_line = json.dumps({"level": "error", "msg": 'runc create failed: exec: "/bin/nope": not found'})
    failure = json.dumps({"data": -1, "message": runc_line + "\n"}).encode() + b"\n"

    assert parse_sync_message(b'{"data": 4242}\n') == 4242
    assert parse_sync_message(failure) == 'runc create failed: exec: "/bin/nope": not found'
    assert parse_sync_message(b'{"data": -1, "message": "plain text error\\n"}') == "plain text error"
    assert parse_sync_message(b'{"data": -1}') == "the runtime reported no error message"


@given(st.text(min_size=1).filter(lambda text: text.strip() and not text.strip().startswith("{")))
def test_sync_message_carries_any_runtime_text(message: str) -> None:
    line = json.dumps({"data": -1, "message": message}).encode()

    assert parse_sync_message(line) == message.strip()
