"""Tests of the HDF5 data format with sha256 sidecars (ride/data.py)."""
from __future__ import annotations

import hashlib
import os

import h5py
import numpy as np
import pytest

from ride.data import DataError, atomic_write, checksum_path, load_images, save_images, sha256sum, verify_checksum


def _images(seed=0, shape=(3, 6, 7), dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _dir_entries(path):
    return sorted(p.name for p in path.iterdir())


def test_round_trip(tmp_path):
    images = _images()
    path = tmp_path / "sub" / "train.h5"
    digest = save_images(path, images, attrs={"source": "unit-test", "noise": 0.5})
    assert path.exists()
    loaded = load_images(path)
    assert loaded.dtype == np.float32
    assert loaded.shape == images.shape
    np.testing.assert_array_equal(loaded, images)
    # sidecar holds the real sha256 of the file, and its name
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sha256sum(path)
    sidecar = checksum_path(path)
    assert sidecar.name == "train.h5.sha256"
    assert sidecar.read_text().split() == [digest, "train.h5"]
    with h5py.File(path, "r") as fh:
        assert fh.attrs["source"] == "unit-test"
        assert fh.attrs["noise"] == 0.5
    # no temporary files remain
    assert _dir_entries(path.parent) == ["train.h5", "train.h5.sha256"]


def test_round_trip_float64_and_index(tmp_path):
    images = _images(1, (5, 4, 4), np.float64)
    path = tmp_path / "x.h5"
    save_images(path, images)
    loaded = load_images(path)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, images.astype(np.float32))
    part = load_images(path, index=slice(1, 3))
    np.testing.assert_array_equal(part, images[1:3].astype(np.float32))


def test_overwrite_updates_checksum(tmp_path):
    path = tmp_path / "x.h5"
    first = save_images(path, _images(0))
    second = save_images(path, _images(1))
    assert first != second
    np.testing.assert_array_equal(load_images(path), _images(1))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(DataError, match="nope.h5: no such file"):
        load_images(path)


def test_missing_dataset_names_file_and_dataset(tmp_path):
    path = tmp_path / "wrong_key.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("data", data=_images())
    with pytest.raises(DataError) as err:
        load_images(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "'images'" in msg
    assert "data" in msg  # what was found instead


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("shape", [(6, 7), (2, 3, 6, 7), (10,)])
def test_wrong_rank_on_load(tmp_path, shape):
    path = tmp_path / "rank.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=np.zeros(shape, np.float32))
    with pytest.raises(DataError, match=r"rank.h5: dataset 'images' must have shape N x H x W"):
        load_images(path)


@pytest.mark.parametrize(
    "images", [np.zeros((6, 7), np.float32), np.zeros((1, 2, 6, 7), np.float32), np.zeros((2, 6, 7), np.int64)]
)
def test_save_rejects_wrong_form(tmp_path, images):
    path = tmp_path / "bad.h5"
    with pytest.raises(DataError, match="float array of shape N x H x W"):
        save_images(path, images)
    assert not path.exists()
    assert not checksum_path(path).exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, bad):
    images = _images()
    images[1, 2, 3] = bad
    path = tmp_path / "nan.h5"
    save_images(path, images)  # the checksum is fine; the content is not
    with pytest.raises(DataError, match="nan.h5: dataset 'images' contains NaN or Inf"):
        load_images(path)


def test_truncated_file_detected(tmp_path):
    path = tmp_path / "trunc.h5"
    save_images(path, _images(shape=(4, 16, 16)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        load_images(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "sha256" in msg and "does not match" in msg


def test_modified_byte_detected(tmp_path):
    path = tmp_path / "mod.h5"
    images = _images(shape=(4, 16, 16))
    save_images(path, images)
    # Flip one byte inside the raw data (HDF5 stays readable, only the values change).
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(images.tobytes()[:64])
    assert offset > 0
    data[offset + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"mod\.h5: sha256 .* does not match"):
        load_images(path)
    with pytest.raises(DataError, match="mod.h5"):
        verify_checksum(path)
    # Without verification the corruption goes unnoticed: the sidecar is what catches it.
    loaded = load_images(path, verify=False)
    assert not np.array_equal(loaded, images)


def test_unreadable_file_without_sidecar(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match="garbage.h5: not a readable HDF5 file"):
        load_images(path)


def test_atomic_write_leaves_nothing_when_writer_raises(tmp_path):
    target = tmp_path / "out.bin"

    def writer(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(target, writer)
    assert not target.exists()
    assert _dir_entries(tmp_path) == []


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old complete content")

    def writer(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"new but incomplete")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old complete content"
    assert _dir_entries(tmp_path) == ["out.bin"]


def test_atomic_write_success_and_temp_location(tmp_path):
    target = tmp_path / "deep" / "out.bin"
    seen = []

    def writer(tmp):
        seen.append(tmp)
        assert not target.exists()  # nothing visible under the final name while writing
        with open(tmp, "wb") as fh:
            fh.write(b"payload")

    atomic_write(target, writer)
    assert target.read_bytes() == b"payload"
    # written next to the target (same file system, so os.replace is atomic)
    assert os.path.dirname(seen[0]) == str(target.parent)
    assert not os.path.exists(seen[0])


def test_save_images_failing_midway_is_atomic(tmp_path):
    """An HDF5 write that fails after the dataset exists leaves neither file nor sidecar."""
    path = tmp_path / "fail.h5"

    class Unstorable:
        pass

    with pytest.raises(Exception):
        save_images(path, _images(), attrs={"bad": Unstorable()})
    assert _dir_entries(tmp_path) == []


def test_save_images_failing_keeps_previous_version(tmp_path):
    path = tmp_path / "keep.h5"
    save_images(path, _images(0))

    class Unstorable:
        pass

    with pytest.raises(Exception):
        save_images(path, _images(1), attrs={"bad": Unstorable()})
    np.testing.assert_array_equal(load_images(path), _images(0))
    assert _dir_entries(tmp_path) == ["keep.h5", "keep.h5.sha256"]


def test_empty_sidecar_is_a_data_error(tmp_path):
    path = tmp_path / "empty_sidecar.h5"
    save_images(path, _images())
    checksum_path(path).write_text("")
    with pytest.raises(DataError, match="empty_sidecar.h5"):
        load_images(path)
