"""Cold pull+unpack of a ~100 MB image: pycri's PullImage against `skopeo copy` + `umoci unpack`.

Run as root from the repository: `.venv/bin/python bench/pull.py [--iterations N]`.

The image is built here, deterministically (seeded PRNG, fixed mtimes), and served by a
docker-registry on 127.0.0.1 that this script starts and stops. Each iteration runs the
reference (skopeo copy into a fresh OCI layout, then umoci unpack into a fresh bundle) and
then a pull into a freshly started `pycri serve` with a private root, so no run reuses
blobs or snapshots of another. Dirty pages are synced before each timed run, so no run
pays for the previous one's writeback.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pycri.api import api_pb2, api_pb2_grpc  # noqa: E402
from tests.support.busybox_images import busybox_layer  # noqa: E402
from tests.support.daemon import PycriProcess, remove_tree, short_tempdir  # noqa: E402
from tests.support.oci_images import (  # noqa: E402
    Entry,
    Image,
    Layer,
    dir_entry,
    file_entry,
    make_image,
    make_layer,
    push_image,
)
from tests.support.registry import LocalRegistry  # noqa: E402

REPOSITORY = "bench/big"
TAG = "latest"
SEED = 20240601
MIB = 1 << 20
MB = 1_000_000
TEXT_POOL_BYTES = 4 * MIB
SMALL_FILES_PER_DIR = 50
SKOPEO = "skopeo"
UMOCI = "umoci"
GNU_TIME = "/usr/bin/time"
SYLLABLES = ["ka", "lo", "mi", "nu", "re", "sa", "te", "vo", "xi", "zu", "an", "or", "el", "ip"]
CODE_TOKENS = ["def", "return", "self", "import", "class", "if", "else", "(", ")", ":", "=", "\n", "\n    "]
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# -- the image ---------------------------------------------------------------------


class ContentSource:
    """Seeded file contents: random bytes gzip cannot shrink, and word text it shrinks about 3x."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        made_up = ["".join(self._rng.choices(SYLLABLES, k=self._rng.randint(1, 4))) for _ in range(3000)]
        vocabulary = made_up + CODE_TOKENS
        words = self._rng.choices(vocabulary, k=TEXT_POOL_BYTES // 4)
        self._text = " ".join(words).encode()[:TEXT_POOL_BYTES]

    def random_bytes(self, size: int) -> bytes:
        return self._rng.randbytes(size)

    def text(self, size: int) -> bytes:
        """`size` bytes of text from random places in the pool (gzip's window is far smaller)."""
        pieces, remaining = [], size
        while remaining:
            piece = min(remaining, 256 * 1024)
            start = self._rng.randrange(len(self._text) - piece)
            pieces.append(self._text[start : start + piece])
            remaining -= piece
        return b"".join(pieces)

    def small_size(self) -> int:
        return self._rng.randint(1024, 16 * 1024)

    def coin(self, probability: float) -> bool:
        return self._rng.random() < probability


def small_files_entries(source: ContentSource, top: str, count: int, random_share: float, suffix: str) -> list[Entry]:
    """`count` files of 1-16 KiB in `top/NN/MM/`, `random_share` of them random bytes."""
    entries = [dir_entry(part) for part in _parents(top)]
    for index in range(count):
        group, sub = divmod(index // SMALL_FILES_PER_DIR, 8)
        directory = f"{top}/{group:02d}/{sub:02d}"
        if index % SMALL_FILES_PER_DIR == 0:
            if sub == 0:
                entries.append(dir_entry(f"{top}/{group:02d}"))
            entries.append(dir_entry(directory))
        size = source.small_size()
        data = source.random_bytes(size) if source.coin(random_share) else source.text(size)
        mode = 0o755 if index % 7 == 0 else 0o644
        entries.append(file_entry(f"{directory}/file{index:05d}{suffix}", data, mode=mode))
    return entries


def large_files_entries(source: ContentSource, top: str, sizes_mib: list[int], text: bool) -> list[Entry]:
    entries = [dir_entry(part) for part in _parents(top)]
    for index, size_mib in enumerate(sizes_mib):
        data = source.text(size_mib * MIB) if text else source.random_bytes(size_mib * MIB)
        entries.append(file_entry(f"{top}/blob{index:02d}.{'txt' if text else 'bin'}", data))
    return entries


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[: depth + 1]) for depth in range(len(parts))]


def build_image(scale: float = 1.0) -> tuple[Image, int, int]:
    """The benchmark image, its uncompressed size in bytes and its number of files.

    `scale` below 1 makes a smaller image of the same shape: fewer small files, smaller big ones.
    """
    source = ContentSource(SEED)

    def count(number: int) -> int:
        return max(1, round(number * scale))

    layer_entries = [
        small_files_entries(source, "usr/share/doc/bench", count(3000), random_share=0.0, suffix=".txt"),
        small_files_entries(source, "usr/lib/bench", count(3000), random_share=0.6, suffix=".so"),
        large_files_entries(source, "opt/data", [count(18)] * 2, text=False),
        large_files_entries(source, "var/lib/bench", [count(24)], text=True)
        + large_files_entries(source, "var/cache/bench", [count(12)], text=False),
        large_files_entries(source, "srv/assets", [1] * count(16), text=False),
    ]
    layers: list[Layer] = [busybox_layer("gzip")] + [make_layer(entries, "gzip") for entries in layer_entries]
    uncompressed = sum(len(entry.data) for entries in layer_entries for entry in entries)
    files = sum(1 for entries in layer_entries for entry in entries if entry.data)
    image = make_image(layers, {"Cmd": ["sh"]})
    return image, uncompressed, files


# -- the reference: skopeo copy + umoci unpack -------------------------------------------


@dataclass
class ReferenceRun:
    seconds: float
    skopeo_seconds: float
    umoci_seconds: float
    skopeo_peak_rss: int
    umoci_peak_rss: int


def loopback_env() -> dict[str, str]:
    """The environment without proxy settings: every request here goes to 127.0.0.1."""
    return {key: value for key, value in os.environ.items() if key.lower() not in _PROXY_VARIABLES}


def run_measured(argv: list[str], workdir: Path) -> tuple[float, int]:
    """Run argv to its end; (wall seconds, peak RSS in bytes) of that one process.

    GNU time measures the RSS: a child's own ru_maxrss would count this script's RSS
    (the image held in memory), which the child carries until it calls exec.
    """
    name = Path(argv[0]).name
    stderr_path, rss_path = workdir / f"{name}.stderr", workdir / f"{name}.maxrss"
    with stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        # A session of its own, so that an interrupted run can end the tool along with GNU time.
        process = subprocess.Popen(
            [GNU_TIME, "--format=%M", f"--output={rss_path}", *argv],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=loopback_env(),
            start_new_session=True,
        )
        try:
            returncode = process.wait()
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        seconds = time.perf_counter() - started
    if returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {returncode}:\n{stderr_path.read_text()}")
    return seconds, int(rss_path.read_text().split()[-1]) * 1024


def reference_pull(registry: LocalRegistry) -> ReferenceRun:
    workdir = Path(tempfile.mkdtemp(prefix="pycri-bench-ref-", dir="/tmp"))
    try:
        layout = f"{workdir}/layout:big"
        os.sync()
        skopeo_seconds, skopeo_rss = run_measured(
            [SKOPEO, "copy", "--src-tls-verify=false", f"docker://{registry.host}/{REPOSITORY}:{TAG}", f"oci:{layout}"],
            workdir,
        )
        umoci_seconds, umoci_rss = run_measured([UMOCI, "unpack", "--image", layout, str(workdir / "bundle")], workdir)
        return ReferenceRun(skopeo_seconds + umoci_seconds, skopeo_seconds, umoci_seconds, skopeo_rss, umoci_rss)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- pycri ------------------------------------------------------------------------------


@dataclass
class PycriRun:
    seconds: float
    idle_rss: int
    peak_rss: int


def proc_status_bytes(pid: int, field_name: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field_name}")


def pycri_pull(registry: LocalRegistry, image: Image) -> PycriRun:
    daemon = PycriProcess(short_tempdir("pycri-bench-"), settings={"log_level": "info"})
    try:
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        with daemon.channel() as channel:
            images = api_pb2_grpc.ImageServiceStub(channel)
            images.ListImages(api_pb2.ListImagesRequest())  # the connection is up before the clock starts
            idle_rss = proc_status_bytes(pid, "VmRSS")
            request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=f"{registry.host}/{REPOSITORY}:{TAG}"))
            os.sync()
            started = time.perf_counter()
            reply = images.PullImage(request, timeout=600)
            seconds = time.perf_counter() - started
        peak_rss = proc_status_bytes(pid, "VmHWM")
        if reply.image_ref != image.config_digest:
            raise RuntimeError(f"pycri pulled {reply.image_ref}, expected {image.config_digest}")
        return PycriRun(seconds, idle_rss, peak_rss)
    finally:
        daemon.stop()
        remove_tree(daemon.base)


# -- report -----------------------------------------------------------------------------


def megabytes(size: int) -> str:
    return f"{size / MB:.1f} MB"


def summary(values: list[float]) -> str:
    return f"min {min(values):.2f} s, median {statistics.median(values):.2f} s"


def report(image: Image, references: list[ReferenceRun], pulls: list[PycriRun]) -> None:
    reference_seconds = [run.seconds for run in references]
    pycri_seconds = [run.seconds for run in pulls]
    print(f"skopeo copy:      {summary([run.skopeo_seconds for run in references])}")
    print(f"umoci unpack:     {summary([run.umoci_seconds for run in references])}")
    print(f"skopeo+umoci:     {summary(reference_seconds)}")
    print(f"pycri PullImage:  {summary(pycri_seconds)}")
    print(
        "peak RSS: pycri daemon "
        f"{megabytes(max(run.peak_rss for run in pulls))} (VmHWM over the daemon's life, "
        f"{megabytes(max(run.idle_rss for run in pulls))} idle before the pull); "
        f"skopeo {megabytes(max(run.skopeo_peak_rss for run in references))}, "
        f"umoci {megabytes(max(run.umoci_peak_rss for run in references))} (GNU time, one process each)"
    )
    pycri_median, reference_median = statistics.median(pycri_seconds), statistics.median(reference_seconds)
    print(
        f"pull+unpack {megabytes(image.size)} ({len(image.layers)} layers): "
        f"pycri median {pycri_median:.2f} s, skopeo+umoci median {reference_median:.2f} s, "
        f"ratio {pycri_median / reference_median:.2f}x (target <= 1.0x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed runs of each side (default 3)")
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/pull.py needs root (umoci keeps ownership, pycri sets owners)", file=sys.stderr)
        return 2
    missing = [tool for tool in (SKOPEO, UMOCI, GNU_TIME, "docker-registry") if shutil.which(tool) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    # A SIGTERM unwinds like Ctrl-C, so the registry and daemon are stopped and dirs removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = time.perf_counter()
    image, uncompressed, files = build_image()
    print(
        f"image: {len(image.layers)} gzip layers, {megabytes(image.size)} compressed, "
        f"{megabytes(uncompressed)} of file data in {files} files (built in {time.perf_counter() - started:.1f} s)"
    )
    registry_dir = Path(tempfile.mkdtemp(prefix="pycri-bench-registry-", dir="/tmp"))
    registry = LocalRegistry(registry_dir)
    try:
        registry.start()
        push_image(registry.url, REPOSITORY, TAG, image)
        references: list[ReferenceRun] = []
        pulls: list[PycriRun] = []
        for iteration in range(1, arguments.iterations + 1):
            references.append(reference_pull(registry))
            pulls.append(pycri_pull(registry, image))
            reference, pull = references[-1], pulls[-1]
            print(
                f"iteration {iteration}: skopeo+umoci {reference.seconds:.2f} s "
                f"(skopeo {reference.skopeo_seconds:.2f} s, umoci {reference.umoci_seconds:.2f} s), "
                f"pycri {pull.seconds:.2f} s",
                flush=True,
            )
        report(image, references, pulls)
    finally:
        registry.stop()
        shutil.rmtree(registry_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
