"""The watch on conmon's exit dir: a container's exit reaches pycri as it happens.

conmon writes <exit dir>/<container id> (a temp file, then a rename) when a container
exits; inotify reports the name and the callback takes it from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pycri.inotify import DirWatch


class ExitWatch:
    def __init__(self, exit_dir: Path, on_exit: Callable[[str], None]) -> None:
        self._watch = DirWatch(exit_dir)
        self._on_exit = on_exit

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._watch.open(), self._read)

    def _read(self) -> None:
        names, _ = self._watch.drain()
        for name in names:
            if not name.startswith("."):  # conmon writes a temp file, then renames it
                self._on_exit(name)

    def stop(self) -> None:
        if self._watch.fd >= 0:
            asyncio.get_running_loop().remove_reader(self._watch.fd)
            self._watch.close()
