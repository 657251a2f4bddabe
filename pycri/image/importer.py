"""Importing image archives into the image store, under the names the archive and the user give."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycri.errors import InvalidArgument
from pycri.image.archive import ArchivedImage, ArchiveError, ImageArchive
from pycri.image.manifest import Platform
from pycri.image.metadata import ImageRecord
from pycri.image.reference import InvalidReference, Reference, parse_reference
from pycri.image.service import ImageService


@dataclass
class ImageNames:
    tags: list[str] = field(default_factory=list)  # "repo:tag"
    digests: list[str] = field(default_factory=list)  # "repo@sha256:..."

    def add(self, ref: Reference, entry_digests: Sequence[str]) -> None:
        if ref.repo_tag and ref.repo_tag not in self.tags:
            self.tags.append(ref.repo_tag)
        for name in [ref.repo_digest, *(f"{ref.name}@{digest}" for digest in entry_digests)]:
            if name and name not in self.digests:
                self.digests.append(name)


def is_bare_tag(name: str) -> bool:
    """An OCI ref name that is only a tag ("1.36"), not a reference ("busybox:1.36", "example.com/app")."""
    return not any(separator in name for separator in "/:@")


def _has_tag(text: str) -> bool:
    name = text.partition("@")[0]
    return name.rfind(":") > name.rfind("/")


def _parse(text: str, what: str) -> Reference:
    try:
        return parse_reference(text)
    except InvalidReference as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


def assign_names(image: ArchivedImage, requested: Sequence[str], images_in_archive: int) -> ImageNames:
    """Tags and repo digests for one image of an archive, normalised as pulls name images.

    The archive's full references name the image as they are. A name given only as a tag
    ("1.36") takes its repository from each --name without a tag. A --name with a tag
    names the image as it is, so it fits only an archive of one image; one without a tag
    gets the archive's bare tags, or "latest" when there are none. Repo digests pair every
    repository with the digests of the index.json entries that lead to the image.
    """
    names = ImageNames()
    bare_tags = [name for name in image.names if is_bare_tag(name)]
    for name in image.names:
        if not is_bare_tag(name):
            names.add(_parse(name, f"the archive's image name {name!r}"), image.entry_digests)
    repositories = []
    for text in requested:
        ref = _parse(text, f"--name {text}")
        if ref.digest is not None:
            raise InvalidArgument(f"--name {text}: give a repository or repository:tag, not a digest")
        if _has_tag(text):
            if images_in_archive > 1:
                raise InvalidArgument(f"--name {text}: a tag fits one image, the archive holds {images_in_archive}")
            names.add(ref, image.entry_digests)
        else:
            repositories.append(ref.name)
    for repository in repositories:
        for tag in bare_tags or ["latest"]:
            ref = _parse(f"{repository}:{tag}", f"--name {repository} with the archive's tag {tag!r}")
            names.add(ref, image.entry_digests)
    if bare_tags and not repositories:
        raise InvalidArgument(
            f"the archive names an image only by the tag {bare_tags[0]!r}: give its repository with --name REPOSITORY"
        )
    return names


async def import_archive(
    service: ImageService, path: Path, platform: Platform, requested: Sequence[str]
) -> AsyncIterator[ImageRecord]:
    """Import every image of the archive at `path` (the one for `platform` of a multi-platform
    image), yielding each once stored. A failure stops the import and leaves nothing of the
    failing image; the images before it stay imported."""
    label = f"import {path}"
    try:
        config_max = service.limits.config_max_bytes
        archive = await asyncio.to_thread(ImageArchive, path, platform, config_max)
    except ArchiveError as exc:
        raise InvalidArgument(f"{label}: {exc}") from None
    try:
        named = [(image, assign_names(image, requested, len(archive.images))) for image in archive.images]
    except InvalidArgument as exc:
        raise InvalidArgument(f"{label}: {exc}") from None
    for image, names in named:
        yield await service.import_image(image.source, names.tags, names.digests, label)
