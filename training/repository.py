"""Writing versions into the model repository, for trained and imported models alike.

A version is written into a hidden staging folder beside the versions (the registry ignores
names that are not integers), its card is made last with the sha256 of every file, and the
folder is renamed into place in one step. A run that fails before the rename leaves the
repository as it was: no staging folder, and no model folder it created itself.

NumPy only: importing a plain ONNX file never loads TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent / "models"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def staging_dir(model_root: Path) -> Path:
    """A hidden folder beside the versions; the registry ignores names that are not integers."""
    model_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=model_root))


def _missing_ancestors(folder: Path) -> list[Path]:
    """folder and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def publish(
    repository: Path,
    name: str,
    files: Mapping[str, Callable[[Path], None]],
    card: Callable[[int, dict], dict],
    version: int | None = None,
) -> Path:
    """Write one version of `name` and return its folder.

    files maps each file name to a function that writes it to the path given; card(version,
    files) returns the card, given the version number and {file name: {"sha256": ...}}.
    """
    model_root = repository / name
    created = _missing_ancestors(model_root)
    staging = staging_dir(model_root)
    try:
        for filename, write in files.items():
            write(staging / filename)
        version = version or next_version(model_root)
        digests = {filename: {"sha256": sha256(staging / filename)} for filename in files}
        document = card(version, digests)
        (staging / "card.json").write_text(json.dumps(document, indent=2) + "\n")
        os.chmod(staging, 0o755)
        target = model_root / str(version)
        staging.rename(target)  # atomic; refuses to replace a non-empty version
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # only folders this call made, and only when empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
