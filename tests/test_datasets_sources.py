"""Each source through the real path: served on 127.0.0.1, downloaded, extracted, preprocessed.

The checks are exact where the protocol is: grey levels are recovered as floor(256 x), patches
are windows of the stored images, DC removal is inverted exactly and has the paper's Jacobian.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import sha1, sha256, tar_bytes
from PIL import Image

from ride.data import load_images
from ride.datasets import bsds300, brodatz, maf, photos, vanhateren
from ride.datasets.archive import ArchiveError
from ride.datasets.download import fetch
from ride.datasets.patches import load_patches, remove_dc, restore_dc, sample_patches
from ride.datasets.pixels import luma
from ride.datasets.prepared import load_oriented
from ride.datasets.sources import SourceConfigError, check, download_args, prepared_files

ROOT = Path(__file__).resolve().parents[1]
FAST = {"retries": 2, "backoff": 0.01, "timeout": 10, "progress": False}


def attrs(path):
    with h5py.File(path, "r") as fh:
        return dict(fh.attrs)


# --------------------------------------------------------------------------------------------
# pixels and patches
# --------------------------------------------------------------------------------------------


def test_luma_is_pillows_L_mode():
    rgb = np.random.default_rng(0).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    assert np.array_equal(luma(rgb), np.asarray(Image.fromarray(rgb, "RGB").convert("L")))


def test_patches_are_windows_at_uniform_positions():
    rng = np.random.default_rng(0)
    images = [np.arange(20 * 30, dtype=np.float32).reshape(20, 30), 1e4 + np.arange(40 * 12, dtype=np.float32).reshape(40, 12)]
    patches = sample_patches(images, 20000, 8, rng)
    for p in patches[:2000]:
        k = int(p[0, 0] >= 1e4)
        img = images[k]
        r, c = np.argwhere(img == p[0, 0])[0]
        assert np.array_equal(img[r:r + 8, c:c + 8], p)
    second = patches[:, 0, 0] >= 1e4
    counts = np.array([(~second).sum(), second.sum()])
    positions = np.array([13 * 23, 33 * 5])  # valid 8x8 positions per image
    expected = 20000 * positions / positions.sum()
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    # within an image every position is equally likely (chi-square, 298 degrees of freedom)
    corner = patches[~second, 0, 0].astype(np.int64)
    per_position = np.bincount((corner // 30) * 23 + corner % 30, minlength=13 * 23)
    chi2 = ((per_position - per_position.mean()) ** 2 / per_position.mean()).sum()
    assert per_position.min() > 0 and chi2 < 298 + 5 * np.sqrt(2 * 298)


def test_dc_removal_is_exactly_invertible_with_the_papers_jacobian():
    patches = np.random.default_rng(1).random((500, 8, 8)).astype(np.float32)
    ac, dc = remove_dc(patches)
    assert ac.shape == (500, 63)
    np.testing.assert_allclose(restore_dc(ac, dc), patches.reshape(500, 64), atol=2e-6)
    # the linear map x (64) -> (ac (63), dc): ln|det A| = -ln 64 = -4.1589 (paper, Table 1 note)
    eye = np.eye(64, dtype=np.float64).reshape(64, 8, 8)
    a_ac, a_dc = remove_dc(eye)
    matrix = np.concatenate([a_ac, a_dc[:, None]], axis=1).T
    assert np.linalg.slogdet(matrix)[1] == pytest.approx(-4.1589, abs=1e-4)


# --------------------------------------------------------------------------------------------
# BSDS300
# --------------------------------------------------------------------------------------------


def _bsds(data_server, fake_sources, tmp_path, num_valid=2):
    url = data_server.add("bsds/BSDS300-images.tgz", fake_sources.bsds_tgz)
    archive = tmp_path / "dl" / "BSDS300-images.tgz"
    fetch([url], archive, published_sha256=sha256(fake_sources.bsds_tgz), **FAST)
    out = tmp_path / "bsds300"
    bsds300.prepare(archive, out, {"train": 3000, "valid": 500, "test": 1000}, seed=3, num_valid=num_valid)
    return out


def test_bsds300_protocol_splits_and_provenance(data_server, fake_sources, tmp_path):
    out = _bsds(data_server, fake_sources, tmp_path)
    ids = fake_sources.bsds_ids
    expect = {"train": ids["train"][:-2], "valid": ids["train"][-2:], "test": ids["test"]}
    for split, want in expect.items():
        path = out / f"images_{split}.h5"
        meta = attrs(path)
        assert json.loads(meta["ids"]) == want  # the id lists' order
        images = load_oriented(path)
        for iid, img in zip(want, images):
            gray = fake_sources.bsds_gray[iid]
            assert img.shape == gray.shape  # orientation restored
            # (gray + U[0,1)) / 256: the grey level is recovered exactly, the noise is in [0, 1)
            assert np.array_equal(np.floor(img.astype(np.float64) * 256), gray)
        assert meta["dataset"] == "bsds300" and meta["seed"] == 3
        assert meta["source"].endswith("BSDS300-images.tgz") and meta["source_sha256"] == sha256(fake_sources.bsds_tgz)
        assert not meta["source_verified"] and meta["source_matches_published_sha256"]
        assert "BT.601" in meta["preprocessing"]


def test_bsds300_patch_sets(data_server, fake_sources, tmp_path):
    out = _bsds(data_server, fake_sources, tmp_path)
    for split, n in (("train", 3000), ("valid", 500), ("test", 1000)):
        ac, dc, meta = load_patches(out / f"patches_{split}.h5")
        assert ac.shape == (n, 63) and dc.shape == (n,)
        assert meta["patch_size"] == 8 and "bottom-right pixel dropped" in meta["layout"]
        full = restore_dc(ac, dc).reshape(n, 8, 8)
        images = load_oriented(out / f"images_{split}.h5")
        # every patch is a window of one of this split's images
        for p in full[:50]:
            assert any(
                np.isclose(np.lib.stride_tricks.sliding_window_view(img, (8, 8)), p, atol=1e-5).all(axis=(2, 3)).any()
                for img in images
            )


def test_bsds300_from_an_extracted_folder_equals_the_archive(data_server, fake_sources, tmp_path):
    out = _bsds(data_server, fake_sources, tmp_path)
    folder = tmp_path / "mine"
    from ride.datasets.archive import extract

    extract(tmp_path / "dl" / "BSDS300-images.tgz", folder)
    out2 = tmp_path / "bsds300_local"
    bsds300.prepare(folder, out2, {"train": 3000, "valid": 500, "test": 1000}, seed=3, num_valid=2)
    for name in ("images_test.h5", "patches_train.h5"):
        with h5py.File(out / name) as a, h5py.File(out2 / name) as b:
            key = "images" if name.startswith("images") else "patches"
            assert np.array_equal(a[key][()], b[key][()])
    assert attrs(out2 / "images_test.h5")["source"] == f"local:{folder}"


def test_bsds300_unsafe_or_truncated_archive_is_refused(data_server, fake_sources, tmp_path):
    evil = tar_bytes({"BSDS300/iids_train.txt": b"1\n", "../evil.txt": b"x"})
    data_server.add("evil.tgz", evil)
    fetch([data_server.url("evil.tgz")], tmp_path / "evil.tgz", **FAST)
    with pytest.raises(ArchiveError, match="'..' component"):
        bsds300.prepare(tmp_path / "evil.tgz", tmp_path / "o1", {"train": 10})
    cut = fake_sources.bsds_tgz[: len(fake_sources.bsds_tgz) // 2]
    data_server.add("cut.tgz", cut)
    fetch([data_server.url("cut.tgz")], tmp_path / "cut.tgz", **FAST)  # no checksum configured: arrives
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        bsds300.prepare(tmp_path / "cut.tgz", tmp_path / "o2", {"train": 10}, num_valid=2)
    assert not list((tmp_path / "o2").glob("*.h5"))


# --------------------------------------------------------------------------------------------
# the photos stand-in
# --------------------------------------------------------------------------------------------


def test_photos_stand_in_is_labelled_and_follows_the_protocol(tmp_path):
    written = photos.prepare(tmp_path, {"train": 1000, "valid": 100, "test": 200}, seed=0)
    assert not any("bsds300" in name for name in written)
    for split in ("train", "valid", "test"):
        for kind in ("images", "patches"):
            meta = attrs(tmp_path / f"{kind}_{split}.h5")
            assert meta["dataset"] == "photos" and meta["stand_in"] and "NOT BSDS300" in meta["stand_in_for"]
    images = load_images(tmp_path / "images_train.h5")
    assert images.shape == (len(photos.SPLIT["train"]), 300, 384)
    camera = photos.center_crop(np.asarray(Image.open(photos.photo_path("camera")).convert("L")), (300, 384))
    k = photos.SPLIT["train"].index("camera")
    assert np.array_equal(np.floor(images[k].astype(np.float64) * 256), camera)
    again = tmp_path / "again"
    photos.prepare(again, {"train": 1000, "valid": 100, "test": 200}, seed=0)
    for name in written:  # same seed, same bytes
        assert (again / name).read_bytes() == (tmp_path / name).read_bytes()


def test_photos_log_stands_in_for_van_hateren_with_its_log_protocol(tmp_path):
    """`photos_log`: van Hateren's ln(1 + I + U) on the photographs' grey levels, raw 16x16 patches,
    train and test only, every file labelled as a stand-in for van Hateren."""
    written = photos.prepare(tmp_path, {"train": 500, "test": 100}, seed=0, patch_size=16, protocol="vanhateren")
    assert sorted(written) == ["images_test.h5", "images_train.h5", "patches_test.h5", "patches_train.h5"]
    for name in written:
        meta = attrs(tmp_path / name)
        assert meta["dataset"] == "photos_log" and meta["stand_in"] and "NOT van Hateren" in meta["stand_in_for"]
        assert meta["preprocessing"].startswith("van Hateren's transform") and "ln(1 + I + U)" in meta["preprocessing"]
    images = load_images(tmp_path / "images_train.h5")
    names = photos.SPLIT["train"] + photos.SPLIT["valid"]
    assert images.shape == (len(names), 300, 384)
    camera = photos.center_crop(np.asarray(Image.open(photos.photo_path("camera")).convert("L")), (300, 384))
    noise = np.expm1(images[names.index("camera")].astype(np.float64)) - camera
    assert noise.min() > -1e-4 and noise.max() < 1 + 1e-4 and 0.45 < noise.mean() < 0.55  # U[0, 1)
    with h5py.File(tmp_path / "patches_train.h5", "r") as fh:
        patches = fh["patches"][()]
    assert patches.shape == (500, 256)  # raw: no DC removed, nothing dropped
    windows = np.lib.stride_tricks.sliding_window_view(images, (16, 16), axis=(1, 2)).reshape(-1, 256)
    assert (np.abs(windows - patches[0]).max(axis=1) == 0).any()  # a window of a training image
    with pytest.raises(ValueError, match="not used by the vanhateren protocol"):
        photos.prepare(tmp_path / "bad", {}, protocol="vanhateren", split={"train": ["camera"], "valid": ["coins"],
                                                                          "test": ["moon"]})


# --------------------------------------------------------------------------------------------
# van Hateren
# --------------------------------------------------------------------------------------------


def test_vanhateren_download_and_log_intensities(data_server, fake_sources, tmp_path):
    files = {}
    for n, data in fake_sources.iml.items():
        mirrors = [data_server.url(f"cin/imk{n:05d}.iml"), data_server.add(f"ivanov/imk{n:05d}.iml", data)]
        files[n] = fetch(mirrors, tmp_path / f"imk{n:05d}.iml", **FAST).path  # first mirror: 404
    out = tmp_path / "vh"
    vanhateren.prepare({"train": [files[1], files[2]], "test": [files[80]]}, out, {"train": 500, "test": 100},
                       seed=0, crop=(0, 256, 512, 1024))
    imgs = load_images(out / "images_train.h5")
    assert imgs.shape == (2, 512, 1024)
    counts = np.frombuffer(fake_sources.iml[1], dtype=">u2").reshape(1024, 1536)[:512, 256:1280]
    noise = np.expm1(imgs[0].astype(np.float64)) - counts
    # ln(1 + I + U), U ~ U[0, 1); float32 logs of counts up to 4096 resolve about 0.005 counts
    assert noise.min() > -0.01 and noise.max() < 1.01
    assert noise.mean() == pytest.approx(0.5, abs=0.01) and noise.std() == pytest.approx(12 ** -0.5, abs=0.01)
    patches, dc, meta = load_patches(out / "patches_test.h5")
    assert patches.shape == (100, 256) and dc is None and meta["patch_size"] == 16
    assert json.loads(attrs(out / "images_test.h5")["ids"]) == ["imk00080"]


def test_vanhateren_truncated_file_is_named(tmp_path):
    bad = tmp_path / "imk00001.iml"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match="imk00001.iml: 1000 bytes, expected 3145728"):
        vanhateren.read_iml(bad)


# --------------------------------------------------------------------------------------------
# Brodatz
# --------------------------------------------------------------------------------------------


def test_brodatz_sha1_regions_and_split(data_server, fake_sources, tmp_path):
    gif = fake_sources.gifs["D104"]
    url = data_server.add("brodatz/D104.gif", gif)
    fetch([url], tmp_path / "D104.gif", sha1=sha1(gif), **FAST)
    brodatz.prepare(tmp_path / "D104.gif", tmp_path / "out", "D104", seed=0)
    train, test = load_images(tmp_path / "out" / "D104_train.h5"), load_images(tmp_path / "out" / "D104_test.h5")
    assert train.shape == (15, 160, 160) and test.shape == (1, 160, 160)
    t = json.loads(attrs(tmp_path / "out" / "D104_test.h5")["region_index"])[0]
    regions = np.insert(train, t, test[0], axis=0)
    whole = regions.reshape(4, 4, 160, 160).swapaxes(1, 2).reshape(640, 640)
    gray = np.asarray(Image.open(io.BytesIO(gif)).convert("L"))
    assert np.array_equal(np.floor(whole.astype(np.float64) * 256), gray)
    assert attrs(tmp_path / "out" / "D104_train.h5")["source_verified"]


# --------------------------------------------------------------------------------------------
# MAF
# --------------------------------------------------------------------------------------------


def test_maf_member_is_read_out_of_the_archive(data_server, fake_sources, tmp_path):
    url = data_server.add("zenodo/data.tar.gz", fake_sources.maf_tgz)
    fetch([url], tmp_path / "data.tar.gz", **FAST)
    maf.prepare(tmp_path / "data.tar.gz", tmp_path / "out", max_rows=700)
    for theirs, ours in maf.SPLITS.items():
        rows, dc, meta = load_patches(tmp_path / "out" / f"patches_{ours}.h5")
        want = fake_sources.maf_rows[theirs][:700]
        assert dc is None and rows.shape == want.shape
        np.testing.assert_array_equal(rows, want.astype(np.float32))
        assert meta["rows_in_source"] == len(fake_sources.maf_rows[theirs])
    assert not list((tmp_path / "out").glob(".extract*"))


# --------------------------------------------------------------------------------------------
# config/datasets.yaml
# --------------------------------------------------------------------------------------------


def _config():
    return yaml.safe_load((ROOT / "config" / "datasets.yaml").read_text())["data_sources"]


def test_config_is_valid_and_names_the_papers_textures():
    from snakemake.utils import validate

    cfg = _config()
    validate(cfg, str(ROOT / "workflow" / "schemas" / "datasets.schema.yaml"))
    check(cfg)
    assert {"D104", "D34"} <= set(cfg["brodatz"]["textures"])
    assert cfg["bsds300"]["patches"]["paper"] == {"train": 1_600_000, "valid": 180_000, "test": 1_000_000}
    files = prepared_files(cfg, "smoke")
    assert all("bsds300" not in f for f in files["photos"])
    assert "datasets/photos_log/smoke/patches_test.h5" in files["photos_log"]
    assert all("vanhateren" not in f for f in files["photos_log"])


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["bsds300"].update(sha265="x"), "sha265"),
    (lambda c: c["brodatz"]["textures"].update(D1="abc"), "abc"),
    (lambda c: c["vanhateren"]["urls"].append("http://example.org/no-placeholder.iml"), "no-placeholder"),
])
def test_schema_rejects_mistakes(mutate, message):
    from snakemake.utils import validate

    cfg = _config()
    mutate(cfg)
    with pytest.raises(Exception, match=message):
        validate(cfg, str(ROOT / "workflow" / "schemas" / "datasets.schema.yaml"))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["vanhateren"]["test"].update(first=70), "in train and test"),
    (lambda c: c["vanhateren"]["images"]["paper"].update(test=50), "range holds 20"),
    (lambda c: c["photos"]["test"].append("lena"), "unknown photos"),
    (lambda c: c["photos"]["test"].append("camera"), "more than one split"),
    (lambda c: c["photos_log"]["train"].append("lena"), "photos_log: unknown photos"),
    (lambda c: c["maf"].update(local="/nonexistent/BSDS300.hdf5"), "does not exist"),
])
def test_cross_checks_name_the_key(mutate, message):
    cfg = _config()
    mutate(cfg)
    with pytest.raises(SourceConfigError, match=message):
        check(cfg)


def test_download_arguments():
    cfg = _config()
    args = download_args(cfg, "vanhateren", "imk00007")
    assert "--url http://cin-11.medizin.uni-tuebingen.de:61280/vanhateren/iml/imk00007.iml" in args
    assert "--sha1 423d727f3bfd62a1f66942ff27d2ffa90d7595fd" in download_args(cfg, "brodatz", "D104")
    assert "--published-sha256" in download_args(cfg, "bsds300") and "--sha256" not in download_args(cfg, "bsds300")
    cfg["brodatz"]["local"] = "/data/brodatz"
    assert "--local /data/brodatz/D34.gif" in download_args(cfg, "brodatz", "D34")


def test_dequantized_values_stay_in_their_grey_level_bin():
    from ride.datasets.pixels import dequantize

    class AlmostOne:
        def random(self, shape, dtype):
            return np.full(shape, np.nextafter(1.0, 0.0), dtype=dtype)

    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = dequantize(gray, AlmostOne())
    assert out.dtype == np.float32 and np.array_equal(np.floor(out.astype(np.float64) * 256), gray)


def test_cli_prepare_reports_a_bad_archive_in_one_line(tmp_path, capsys):
    from ride.cli import main

    bad = tmp_path / "BSDS300-images.tgz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 truncated")
    assert main(["prepare", "bsds300", "--source", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "download it again" in err
