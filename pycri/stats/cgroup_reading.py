"""One cgroup read for the metrics: its stats, details and processes, and the names of its block
devices (blocking: run in a thread)."""

from __future__ import annotations

from pathlib import Path

from pycri.cgroups.details import process_counts
from pycri.cgroups.manager import CgroupManager
from pycri.stats.metrics import CgroupReading

SYS_BLOCK_DEVICES = Path("/sys/dev/block")


def read_cgroup(cgroups: CgroupManager, cgroups_path: str) -> CgroupReading | None:
    """Everything the metrics take from one cgroup; None when it is gone (blocking)."""
    try:
        stats = cgroups.read_stats(cgroups_path)
        details = cgroups.read_details(cgroups_path)
    except FileNotFoundError:
        return None
    names = {(io.major, io.minor): block_device_name(io.major, io.minor) for io in details.io}
    return CgroupReading(stats, details, process_counts(details.pids), names)


def block_device_name(major: int, minor: int) -> str:
    """/dev/<name> of a block device, as cAdvisor names devices; "major:minor" when sysfs has no name."""
    try:
        uevent = (SYS_BLOCK_DEVICES / f"{major}:{minor}" / "uevent").read_text()
    except OSError:
        return f"{major}:{minor}"
    for line in uevent.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return f"/dev/{value}"
    return f"{major}:{minor}"
