"""Downloads: mirrors in order, streamed, resumed with HTTP Range, retried, checksummed, atomic.

A download is streamed into ``<dest>.part`` beside the target; after a broken connection the
next attempt asks for the remaining bytes only (``Range: bytes=N-``), so a re-run also resumes.
The file is moved to ``dest`` only after its sha256 (and SHA1 where a source publishes one)
matched. Every download writes ``<dest>.json``: where it came from and the checksums seen,
which the preparation step copies into the attributes of the files it writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3
from tqdm import tqdm

from ..data import atomic_write

CHUNK = 1 << 16
# Answers that say the file is not at this address: the next mirror, not another try, helps.
NOT_HERE = {401, 403, 404, 410}


class DownloadError(OSError):
    """No mirror delivered the file (with the right checksum)."""


@dataclass
class Fetched:
    """What a download delivered; written as ``<dest>.json``."""

    path: str
    source: str
    bytes: int
    sha256: str
    sha1: str
    sha256_expected: str | None = None
    sha1_expected: str | None = None
    published_sha256: str | None = None
    verified: bool = False
    mirrors: list[str] = field(default_factory=list)
    time: str = ""
    matches_published: bool | None = None

    def __post_init__(self) -> None:
        if self.published_sha256:
            self.matches_published = self.published_sha256.lower() == self.sha256

    def write(self) -> None:
        text = json.dumps(asdict(self), indent=2)
        atomic_write(provenance_path(self.path), lambda tmp: Path(tmp).write_text(text))


def provenance_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.json")


def read_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``<path>.json`` a download wrote, or None for a file that was not downloaded here."""
    prov = provenance_path(path)
    return json.loads(prov.read_text()) if prov.exists() else None


def digests(path: str | os.PathLike) -> tuple[str, str]:
    """(sha256, sha1) of a file, read once."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


def _check(path: Path, where: str, sha256: str | None, sha1: str | None) -> tuple[str, str, str | None]:
    """Digests of ``path`` and a message if one differs from the expected value (None: fine)."""
    got256, got1 = digests(path)
    for name, want, got in (("sha256", sha256, got256), ("sha1", sha1, got1)):
        if want and want.lower() != got:
            return got256, got1, f"{where}: {name} {got}, expected {want.lower()}"
    return got256, got1, None


def _stream(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (Range from its current size); raise on failure."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as resp:
        if resp.status_code == 416:  # the partial file is no prefix of this one: start again
            part.unlink()
            raise requests.ConnectionError(f"{url}: range {have}- not satisfiable; restarting")
        resp.raise_for_status()
        if have and resp.status_code != 206:  # the server ignored Range: it sends everything
            have = 0
        if have and not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            part.unlink()
            raise requests.ConnectionError(f"{url}: answered another range than bytes={have}-; restarting")
        total = resp.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        with open(part, "ab" if have else "wb") as fh, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=Path(url).name,
            disable=not progress, leave=False,
        ) as bar:
            try:
                # raw bytes: a server that labels a .tgz "Content-Encoding: gzip" must not get it unpacked
                for block in resp.raw.stream(CHUNK, decode_content=False):
                    fh.write(block)
                    bar.update(len(block))
            except urllib3.exceptions.HTTPError as err:
                raise requests.ConnectionError(f"{url}: {type(err).__name__}") from err
        if total is not None and part.stat().st_size < total:
            raise requests.ConnectionError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes")


def _link_or_copy(src: Path, tmp: Path) -> None:
    """A hard link where the file system allows one (MAF's archive is large), else a copy."""
    tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)


def _from_mirror(url: str, part: Path, retries: int, backoff: float, timeout: float, progress: bool) -> str | None:
    """Download ``url`` into ``part`` with retries; None on success, else why this mirror failed."""
    why = f"{url}: no attempt"
    for attempt in range(retries):
        try:
            _stream(url, part, timeout, progress)
            return None
        except requests.HTTPError as err:
            code = err.response.status_code if err.response is not None else None
            why = f"{url}: HTTP {code}"
            if code in NOT_HERE:
                return why
        except requests.RequestException as err:
            why = f"{url}: {type(err).__name__} ({str(err)[:160]})"
        if attempt < retries - 1:
            time.sleep(backoff * 2**attempt)
    return why


def fetch(
    urls: list[str],
    dest: str | os.PathLike,
    sha256: str | None = None,
    sha1: str | None = None,
    published_sha256: str | None = None,
    local: str | os.PathLike | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Fetched:
    """Put the file at ``dest``, from ``local`` if given, else from the first mirror that works.

    Each mirror gets ``retries`` attempts (waiting ``backoff * 2**k`` seconds between them), each
    resuming the partial file. A wrong checksum discards the partial file and moves on to the
    next mirror. ``published_sha256`` is a value that is not trusted enough to enforce: the
    provenance records whether the file matched it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    expected = {"sha256_expected": sha256, "sha1_expected": sha1, "published_sha256": published_sha256}
    if local is not None:
        local = Path(local)
        if not local.is_file():
            raise DownloadError(f"{local}: no such file (configured as the local copy for {dest.name})")
        got256, got1, problem = _check(local, str(local), sha256, sha1)
        if problem:
            raise DownloadError(f"{problem}; the local copy is not the expected file: replace it or fix the checksum")
        atomic_write(dest, lambda tmp: _link_or_copy(local, Path(tmp)))
        done = Fetched(str(dest), f"local:{local}", dest.stat().st_size, got256, got1, **expected,
                       verified=bool(sha256 or sha1), time=stamp)
        done.write()
        return done
    if not urls:
        raise DownloadError(f"{dest}: no URL and no local copy configured")
    part = Path(f"{dest}.part")
    failures: list[str] = []
    for url in urls:
        failure = _from_mirror(url, part, retries, backoff, timeout, progress)
        if failure is None:
            got256, got1, failure = _check(part, url, sha256, sha1)
        if failure is not None:
            # A partial file is only resumed from the mirror that started it.
            part.unlink(missing_ok=True)
            failures.append(failure)
            continue
        os.replace(part, dest)
        done = Fetched(str(dest), url, dest.stat().st_size, got256, got1, **expected,
                       verified=bool(sha256 or sha1), mirrors=list(urls), time=stamp)
        done.write()
        return done
    part.unlink(missing_ok=True)
    raise DownloadError(
        f"could not download {dest.name}: " + "; ".join(failures)
        + f". Mirrors tried in order: {', '.join(urls)}. Without network access, download it elsewhere "
        f"and set `local:` for this source in config/datasets.yaml (or pass --local PATH to `ride download`)."
    )
