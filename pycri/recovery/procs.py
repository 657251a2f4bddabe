"""pycri's conmon processes, found by their command line, and killed only while they are still that.

A conmon is pycri's when its argv[0] is named "conmon" and its --exit-dir is pycri's exit dir;
its --cid names the container (or, for a pause process, the sandbox). The command line is
read the way conmon's option parser (GLib's) reads it, knowing which options take a value, so
that a value such as a container name that looks like an option is never taken for one. Any
command line this parser is unsure of is not pycri's: the sweep leaks rather than kills.
"""

from __future__ import annotations

import os
import select
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# conmon 2.1's options that take no value; every other option takes one.
FLAG_OPTIONS = frozenset(
    {
        "-h", "--help", "--api-version", "-e", "--exec", "--exec-attach", "--leave-stdin-open",
        "--no-new-keyring", "--no-pivot", "--no-sync-log", "--replace-listen-pid", "-i", "--stdin",
        "--sync", "--syslog", "-s", "--systemd-cgroup", "-t", "--terminal", "--version", "--full-attach",
    }
)  # fmt: skip
CID_OPTIONS = ("-c", "--cid")
EXIT_DIR_OPTION = "--exit-dir"


@dataclass(frozen=True)
class ConmonArgs:
    container_id: str
    exit_dir: str


def parse_conmon_cmdline(cmdline: bytes) -> ConmonArgs | None:
    """The container id and exit dir of a conmon command line (/proc/<pid>/cmdline: NUL-separated
    argv), or None when it is not conmon's, lacks either, or is ambiguous."""
    argv = [os.fsdecode(arg) for arg in cmdline.split(b"\0")]
    if argv and argv[-1] == "":
        argv.pop()
    if not argv or os.path.basename(argv[0]) != "conmon":
        return None
    values: dict[str, set[str]] = {"cid": set(), "exit_dir": set()}
    index = 1
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-" or arg in FLAG_OPTIONS:
            continue
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
        elif arg.startswith("--") or len(arg) == 2:
            if index >= len(argv):
                return None
            name, value = arg, argv[index]
            index += 1
        else:
            return None  # a cluster of short options ("-it", "-cID"): not how pycri starts conmon
        if name in CID_OPTIONS:
            values["cid"].add(value)
        elif name == EXIT_DIR_OPTION:
            values["exit_dir"].add(value)
    if len(values["cid"]) != 1 or len(values["exit_dir"]) != 1:
        return None
    (container_id,) = values["cid"]
    (exit_dir,) = values["exit_dir"]
    if not container_id or not exit_dir:
        return None
    return ConmonArgs(container_id=container_id, exit_dir=exit_dir)


def read_conmon_args(pid: int) -> ConmonArgs | None:
    try:
        return parse_conmon_cmdline((PROC / str(pid) / "cmdline").read_bytes())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def _same_dir(one: str | Path, other: str | Path) -> bool:
    return os.path.realpath(one) == os.path.realpath(other)


def find_conmons(exit_dir: Path) -> list[tuple[int, ConmonArgs]]:
    """Every live conmon whose exit dir is `exit_dir`, as (pid, its arguments), by pid."""
    found = []
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        args = read_conmon_args(int(name))
        if args is not None and _same_dir(args.exit_dir, exit_dir):
            found.append((int(name), args))
    return sorted(found, key=lambda pair: pair[0])


def kill_conmon(pid: int, expected: ConmonArgs, wait_seconds: float) -> bool:
    """SIGKILL the process `pid` if it is still the conmon with `expected` arguments, and wait for
    it to end. False when it was gone (or is another process now); TimeoutError if it outlives the wait.

    The pidfd is opened before the command line is read again: while the process it refers to
    is alive the pid cannot be reused, so the command line read is that process's, and the signal
    goes to that process or nowhere.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        exited = select.poll()
        exited.register(pidfd, select.POLLIN)
        if read_conmon_args(pid) != expected or exited.poll(0):
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return False
        if not exited.poll(int(wait_seconds * 1000)):
            raise TimeoutError(f"conmon {pid} did not end within {wait_seconds}s of SIGKILL")
        return True
    finally:
        os.close(pidfd)
