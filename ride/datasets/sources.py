"""What the data rules of the workflow need from ``config/datasets.yaml`` (key ``data_sources``).

The Snakemake rules (``workflow/rules/datasets.smk``) stay thin: the paths of every download and
prepared file, the arguments of ``ride download`` and the cross-checks the JSON schema cannot
express live here, where the tests reach them.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Mapping

DOWNLOADS = "datasets/downloads"
SCALES = ("smoke", "quick", "paper")


class SourceConfigError(ValueError):
    """``data_sources`` is inconsistent in a way the schema cannot see."""


def check(cfg: Mapping[str, Any]) -> None:
    """Cross-checks of ``data_sources`` (after the schema); raise naming the key and the fix."""
    from .photos import FILES

    vh = cfg["vanhateren"]
    for split in ("train", "test"):
        if vh[split]["first"] > vh[split]["last"]:
            raise SourceConfigError(f"data_sources.vanhateren.{split}: first {vh[split]['first']} > last {vh[split]['last']}")
    train, test = (set(range(vh[s]["first"], vh[s]["last"] + 1)) for s in ("train", "test"))
    if train & test:
        raise SourceConfigError(f"data_sources.vanhateren: images {sorted(train & test)[:5]} are in train and test")
    for scale, counts in vh["images"].items():
        for split in ("train", "test"):
            have = vh[split]["last"] - vh[split]["first"] + 1
            if counts[split] > have:
                raise SourceConfigError(
                    f"data_sources.vanhateren.images.{scale}.{split}: {counts[split]} images, but the {split} "
                    f"range holds {have}")
    if vh["crop"] is not None:
        top, left, height, width = vh["crop"]
        if top + height > 1024 or left + width > 1536:
            raise SourceConfigError(f"data_sources.vanhateren.crop {vh['crop']} leaves the 1024x1536 frame")
    for key in ("photos", "photos_log"):
        if key not in cfg:
            continue
        named = [n for split in ("train", "valid", "test") for n in cfg[key].get(split, [])]
        unknown = sorted(set(named) - set(FILES))
        if unknown:
            raise SourceConfigError(f"data_sources.{key}: unknown photos {unknown}; known: {sorted(FILES)}")
        if len(set(named)) != len(named):
            raise SourceConfigError(f"data_sources.{key}: a photograph is named in more than one split")
    for key in ("bsds300", "vanhateren", "brodatz", "maf"):
        local = cfg[key]["local"]
        if local is not None and not Path(local).exists():
            raise SourceConfigError(f"data_sources.{key}.local: {local} does not exist; fix the path or set it to null")


def vanhateren_numbers(cfg: Mapping[str, Any], scale: str) -> dict[str, list[int]]:
    """The image numbers of each split at ``scale``: the first N of each configured range."""
    vh = cfg["vanhateren"]
    return {s: list(range(vh[s]["first"], vh[s]["last"] + 1))[: vh["images"][scale][s]] for s in ("train", "test")}


def download_path(cfg: Mapping[str, Any], source: str, name: str | None = None) -> str:
    """Where the download of ``source`` lands (``name``: one image or texture of a per-file source)."""
    if source in ("bsds300", "maf"):
        local = cfg[source]["local"]
        return f"{DOWNLOADS}/{source}/{Path(local).name if local else cfg[source]['file']}"
    suffix = ".iml" if source == "vanhateren" else ".gif"
    return f"{DOWNLOADS}/{source}/{name}{suffix}"


def download_args(cfg: Mapping[str, Any], source: str, name: str | None = None) -> str:
    """The arguments of ``ride download`` for ``source`` (and one ``name`` of a per-file source)."""
    spec, dl = cfg[source], cfg["download"]
    args = ["--retries", str(dl["retries"]), "--backoff", str(dl["backoff_s"]), "--timeout", str(dl["timeout_s"])]
    if source == "vanhateren":
        num = int(name.removeprefix("imk"))
        urls = [u.format(num=num) for u in spec["urls"]]
        sha = {int(k): v for k, v in (spec["sha256"] or {}).items()}.get(num)
        args += ["--sha256", sha] if sha else []
        local = f"{spec['local']}/{name}.iml" if spec["local"] else None
    elif source == "brodatz":
        urls = [u.format(name=name) for u in spec["urls"]]
        args += ["--sha1", spec["textures"][name]]
        local = f"{spec['local']}/{name}.gif" if spec["local"] else None
    else:
        urls = list(spec["urls"])
        args += ["--sha256", spec["sha256"]] if spec.get("sha256") else []
        args += ["--published-sha256", spec["published_sha256"]] if spec.get("published_sha256") else []
        local = spec["local"]
    for url in urls:
        args += ["--url", url]
    if local:
        args += ["--local", local]
    return shlex.join(args)


def bsds300_source(cfg: Mapping[str, Any]) -> str:
    """The archive, or the local extracted folder that replaces it."""
    local = cfg["bsds300"]["local"]
    return local if local and Path(local).is_dir() else download_path(cfg, "bsds300")


def counts_arg(counts: Mapping[str, int]) -> str:
    return " ".join(f"{split}={n}" for split, n in counts.items())


def split_outputs(source: str, kinds: tuple[str, ...], splits: tuple[str, ...], scale: str = "{scale}") -> list[str]:
    """``datasets/<source>/<scale>/<kind>_<split>.h5`` and their ``.sha256`` sidecars."""
    return [f"datasets/{source}/{scale}/{kind}_{split}.h5{ext}" for kind in kinds for split in splits
            for ext in ("", ".sha256")]


def prepared_files(cfg: Mapping[str, Any], scale: str) -> dict[str, list[str]]:
    """Every prepared file of every source at ``scale`` (sidecars included), by source."""
    three, two, both = ("train", "valid", "test"), ("train", "test"), ("images", "patches")
    brodatz = [f"datasets/brodatz/{scale}/{t}_{s}.h5{ext}" for t in cfg["brodatz"]["textures"]
               for s in two for ext in ("", ".sha256")]
    files = {
        "bsds300": split_outputs("bsds300", both, three, scale),
        "photos": split_outputs("photos", both, three, scale),
        "vanhateren": split_outputs("vanhateren", both, two, scale),
        "brodatz": brodatz,
        "maf": split_outputs("maf", ("patches",), three, scale),
    }
    if "photos_log" in cfg:
        files["photos_log"] = split_outputs("photos_log", both, two, scale)
    return files
