"""Safe extraction of .tgz / .tar(.gz|.bz2|.xz) / .zip archives.

Every member is checked before anything is written: absolute paths, ``..`` components, links
whose target leaves the destination, and device files make the whole archive refused. The
archive is unpacked into a temporary folder beside the destination and moved into place when
complete, so a truncated archive never leaves a half-extracted folder behind.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath


class ArchiveError(ValueError):
    """An archive is corrupt, truncated or unsafe to extract."""


def _unsafe(name: str) -> str | None:
    """Why member ``name`` would land outside the target folder (None: it would not)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' component"
    return None


def _link_escapes(name: str, target: str, hard: bool) -> bool:
    """Whether a link ``name`` -> ``target`` points outside the archive's root."""
    if _unsafe(target) is not None and (PurePosixPath(target).is_absolute() or hard):
        return True
    base = PurePosixPath() if hard else PurePosixPath(name).parent
    depth = 0
    for part in (base / target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False


def check_members(archive: str | os.PathLike) -> list[str]:
    """Names of the archive's members after checking that every one is safe to extract."""
    archive = Path(archive)
    fix = "the archive is unsafe; delete it and get it from a trusted source"
    names = []
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise ArchiveError(f"{archive}: member {bad!r} is corrupt (CRC mismatch); delete the file and download it again")
                for info in zf.infolist():
                    why = _unsafe(info.filename)
                    if why:
                        raise ArchiveError(f"{archive}: member {info.filename!r} has {why}; {fix}")
                    names.append(info.filename)
            return names
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                why = _unsafe(member.name)
                if why is None and (member.issym() or member.islnk()):
                    if _link_escapes(member.name, member.linkname, member.islnk()):
                        why = f"a link to {member.linkname!r} outside the target folder"
                if why is None and not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    why = "a device or special file"
                if why:
                    raise ArchiveError(f"{archive}: member {member.name!r} has {why}; {fix}")
                names.append(member.name)
    except (tarfile.TarError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ArchiveError(
            f"{archive}: not a readable archive ({type(err).__name__}: {err}); it is truncated or "
            f"corrupt: delete it (and its .json) and download it again"
        ) from err
    return names


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract ``archive`` into the folder ``dest`` (replaced if it exists); return ``dest``."""
    archive, dest = Path(archive), Path(dest)
    check_members(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive, "r:*") as tf:
                    tf.extractall(tmp, filter="data")  # the stdlib's own guard, behind ours
        except (tarfile.TarError, EOFError, zipfile.BadZipFile, OSError) as err:
            raise ArchiveError(
                f"{archive}: extraction failed ({type(err).__name__}: {err}); the archive is truncated "
                f"or corrupt: delete it (and its .json) and download it again"
            ) from err
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def find_file(root: str | os.PathLike, name: str) -> Path:
    """The one file called ``name`` under ``root`` (archives differ in their top folders)."""
    hits = sorted(p for p in Path(root).rglob(name) if p.is_file())
    if len(hits) != 1:
        found = "none" if not hits else ", ".join(map(str, hits))
        raise ArchiveError(f"{root}: expected exactly one file named {name!r}, found {found}")
    return hits[0]
