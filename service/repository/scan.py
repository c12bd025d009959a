"""The repository's folders, from listings and names alone: which folders are models and
versions, which are not served and why (misnamed, a symbolic link out of the repository, not
listable), and how a folder's name is shown. Nothing is read or loaded here (service/repository/
registry.py loads what the listing finds)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from modelcard.card import one_line
from modelcard.tables import NAME

VERSION = re.compile(r"[1-9][0-9]{0,18}")  # canonical positive integers; int64 is checked apart
INT64_MAX = 2**63 - 1
NOT_A_NAME = ("not a model name: letters, digits, '_', '.' and '-', at most 128, "
              "starting with a letter or digit")
NOT_A_VERSION = ("not a version: a positive integer in plain digits, without sign, leading zero "
                 f"or space, at most {INT64_MAX}")


def is_version(text: str) -> bool:
    return VERSION.fullmatch(text) is not None and int(text) <= INT64_MAX


def shown(name: str) -> str:
    """A folder name as the index and the log show it: undecodable bytes and control characters
    escaped, cut short."""
    return one_line(os.fsencode(name).decode("utf-8", "backslashreplace"))[:80]


def subfolders(folder: Path, root: str) -> list[tuple[Path, str | None]]:
    """The folders in `folder`, each with None, or why it is not followed: a symbolic link is
    followed only to a folder inside the repository (`root`, resolved). Other entries (files,
    FIFOs, ...) are no folders and are not listed, nor are hidden folders."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):  # a version being written under a hidden name (README)
                continue
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([root, target]) != root:
                        found.append((Path(entry.path), "a symbolic link leading out of the repository"))
                    elif os.path.isdir(target):
                        found.append((Path(entry.path), None))
                elif entry.is_dir(follow_symlinks=False):
                    found.append((Path(entry.path), None))
            except (OSError, ValueError) as error:  # ValueError: a path on another drive
                found.append((Path(entry.path), one_line(f"cannot be inspected ({error})")))
    return found


@dataclass(frozen=True)
class Listing:
    """What the repository's folders hold, from listings and names alone."""

    versions: dict[str, dict[int, Path]] = field(default_factory=dict)  # model: version: folder
    problems: dict[str, str] = field(default_factory=dict)  # model: why its folder cannot be listed
    misnamed: dict[tuple[str, str | None], str] = field(default_factory=dict)  # (model, version): why


def scan(repository: Path) -> Listing:
    """Each model folder's version folders, and the folders that are neither: listings only.
    Raises OSError only when the repository itself cannot be listed."""
    root = os.path.realpath(repository)
    listing = Listing()
    for folder, why in subfolders(repository, root):
        if why is None and not NAME.fullmatch(folder.name):
            why = NOT_A_NAME
        if why is not None:
            listing.misnamed[shown(folder.name), None] = why
            continue
        try:
            found = subfolders(folder, root)
        except OSError as error:
            if not isinstance(error, FileNotFoundError):  # else removed while listing
                listing.problems[folder.name] = f"its folder cannot be listed ({error.strerror})"
            continue
        versions = listing.versions[folder.name] = {}
        for version, why in found:
            if why is None and is_version(version.name):
                versions[int(version.name)] = version
            else:
                listing.misnamed[folder.name, shown(version.name)] = why or NOT_A_VERSION
    return listing
