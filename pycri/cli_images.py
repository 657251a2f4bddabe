"""`pycri images import|ls|rm`: the image store of a root dir, with or without a daemon.

These commands open the root's database and stores themselves. They do not take the
daemon's root lock: SQLite in WAL mode serves several processes, blobs and snapshots
appear by atomic renames. `import` and `rm` hold the image store's lock shared (a
daemon's recovery and garbage collection wait for them or skip a sweep) and announce
their changes, so a `pycri serve` on the same root sees them at its next call
(pycri/image/sharing.py).

A daemon's pull stores blobs and snapshots before it records the image, and this
process cannot see that pull. So garbage collection after `images rm` spares blobs and
snapshots changed within the last GC_GRACE_SECONDS; `--force` drops that grace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pycri.config import Config

if TYPE_CHECKING:
    from pycri.api import api_pb2
    from pycri.image.service import ImageService

GC_GRACE_SECONDS = 600.0
SHORT_ID_LENGTH = 13


def add_images_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    images = commands.add_parser("images", help="import, list and remove images, with or without a running daemon")
    actions = images.add_subparsers(dest="images_command", required=True)
    importing = actions.add_parser("import", help="import an OCI image layout tar or a `docker save` tar")
    importing.add_argument("file", type=Path, help="the archive (a gzip, bzip2 or xz compressed tar works too)")
    importing.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="REF",
        help="also name the image REF (repo:tag); a REF without a tag is the repository for the archive's"
        " bare tags (an OCI ref name such as '1.36'), or gets 'latest'. Repeatable.",
    )
    listing = actions.add_parser("ls", help="list images")
    output = listing.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true", help="print full image IDs only")
    output.add_argument("--json", action="store_true", help="print a ListImagesResponse as JSON")
    removing = actions.add_parser("rm", help="remove images by tag, digest or ID; a tag removes only that tag")
    removing.add_argument("images", nargs="+", metavar="REF|ID")
    removing.add_argument(
        "--force",
        action="store_true",
        help=f"let garbage collection take blobs and snapshots changed within the last {GC_GRACE_SECONDS:g}s"
        " too (they may belong to a pull of a running daemon)",
    )


def run_images(config: Config, args: argparse.Namespace) -> int:
    from pycri.errors import PycriError
    from pycri.image.service import ImageService
    from pycri.state.store import Store, StoreError, make_private_dir

    if args.log_level is None:  # the config's level is the daemon's; a command talks only of problems
        logging.getLogger().setLevel(logging.WARNING)
    try:
        make_private_dir(config.root_dir)
        store = Store(config.db_path)
    except (OSError, sqlite3.Error, StoreError) as exc:
        print(f"pycri: {config.db_path}: {exc}", file=sys.stderr)
        return 1
    from pycri.image.sharing import lock_store, unlock_store

    grace = 0.0 if getattr(args, "force", False) else GC_GRACE_SECONDS
    lock = None
    try:
        service = ImageService(config, store, command=True, gc_grace_seconds=grace)
        if args.images_command != "ls":
            lock = lock_store(config.root_dir, exclusive=False, wait=True)
        return asyncio.run(_run(service, config, args))
    except (PycriError, sqlite3.Error) as exc:
        print(f"pycri: {exc}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            unlock_store(lock)
        store.close()


async def _run(service: ImageService, config: Config, args: argparse.Namespace) -> int:
    if args.images_command == "import":
        return await _import(service, config, args.file, args.name)
    if args.images_command == "ls":
        return await _list(service, args.quiet, args.json)
    return await _remove(service, args.images)


async def _import(service: ImageService, config: Config, path: Path, names: list[str]) -> int:
    from pycri.image.importer import import_archive
    from pycri.image.manifest import parse_platform

    async for record in import_archive(service, path, parse_platform(config.images.platform), names):
        print(" ".join(["imported", record.id, *record.tags, *record.digests]), flush=True)
    return 0


async def _list(service: ImageService, quiet: bool, as_json: bool) -> int:
    from google.protobuf import json_format

    from pycri.api import api_pb2

    images = await service.list()
    if quiet:
        for image in images:
            print(image.id)
    elif as_json:
        print(json_format.MessageToJson(api_pb2.ListImagesResponse(images=images)))
    else:
        print(image_table(images))
    return 0


async def _remove(service: ImageService, images: list[str]) -> int:
    from pycri.errors import PycriError

    status = 0
    for image in images:
        try:
            found = service.find(image)
            if found is None:
                print(f"pycri: images rm {image}: no such image", file=sys.stderr)
                status = 1
                continue
            await service.remove(image)
        except PycriError as exc:
            print(f"pycri: images rm {image}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"deleted {image}")
    return status


def human_size(size: int) -> str:
    """Bytes in decimal units with three significant digits, as crictl shows them ("2.15MB")."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 999.5:
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}PB"


def image_table(images: Sequence[api_pb2.Image]) -> str:
    """One row per tag (an untagged image shows its first repo digest, or <none>)."""
    rows = [("IMAGE ID", "REPOSITORY:TAG", "SIZE", "PINNED")]
    for image in images:
        short_id = image.id.removeprefix("sha256:")[:SHORT_ID_LENGTH]
        for name in list(image.repo_tags) or list(image.repo_digests[:1]) or ["<none>"]:
            rows.append((short_id, name, human_size(image.size), "true" if image.pinned else "false"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)
