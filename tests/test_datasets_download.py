"""Downloads and archive extraction against a local HTTP server (127.0.0.1) with injected faults."""
from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import zipfile

import numpy as np
import pytest
from conftest import sha1, sha256, tar_bytes

from ride.datasets.archive import ArchiveError, check_members, extract
from ride.datasets.download import DownloadError, fetch

FAST = {"retries": 3, "backoff": 0.01, "timeout": 10, "progress": False}
PAYLOAD = np.random.default_rng(0).bytes(300_000)


def test_download_verifies_and_records_provenance(data_server, tmp_path):
    url = data_server.add("a/file.bin", PAYLOAD)
    done = fetch([url], tmp_path / "file.bin", sha256=sha256(PAYLOAD), **FAST)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD
    prov = json.loads((tmp_path / "file.bin.json").read_text())
    assert prov["source"] == url and prov["sha256"] == sha256(PAYLOAD) and prov["verified"] is True
    assert done.sha1 == sha1(PAYLOAD)
    assert not (tmp_path / "file.bin.part").exists()


def test_dropped_connection_resumes_with_range(data_server, tmp_path):
    url = data_server.add("big.bin", PAYLOAD, "drop")
    fetch([url], tmp_path / "big.bin", sha256=sha256(PAYLOAD), **FAST)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    (_, r1), (_, r2) = data_server.requests
    # the second request asks only for what is missing (whole chunks before the drop were kept)
    assert r1 is None and r2.startswith("bytes=") and r2.endswith("-")
    assert 0 < int(r2[6:-1]) <= len(PAYLOAD) // 2


def test_server_ignoring_range_restarts_cleanly(data_server, tmp_path):
    url = data_server.add("big.bin", PAYLOAD, "drop", "norange")
    fetch([url], tmp_path / "big.bin", sha256=sha256(PAYLOAD), **FAST)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_tgz_labelled_gzip_encoded_is_saved_as_sent(data_server, tmp_path):
    tgz = tar_bytes({"a.txt": b"hello"})
    url = data_server.add("x.tgz", tgz, "gzip-label")
    fetch([url], tmp_path / "x.tgz", sha256=sha256(tgz), **FAST)
    assert (tmp_path / "x.tgz").read_bytes() == tgz


def test_server_error_is_retried(data_server, tmp_path):
    url = data_server.add("f.bin", PAYLOAD, "500", "500")
    fetch([url], tmp_path / "f.bin", sha256=sha256(PAYLOAD), **FAST)
    assert len(data_server.requests) == 3


def test_404_on_first_mirror_uses_the_next_without_retrying(data_server, tmp_path):
    good = data_server.add("mirror2/f.bin", PAYLOAD)
    bad = data_server.url("mirror1/f.bin")
    done = fetch([bad, good], tmp_path / "f.bin", sha256=sha256(PAYLOAD), **FAST)
    assert done.source == good
    assert [p for p, _ in data_server.requests] == ["/mirror1/f.bin", "/mirror2/f.bin"]


def test_wrong_checksum_fails_and_leaves_nothing(data_server, tmp_path):
    url = data_server.add("f.bin", PAYLOAD)
    with pytest.raises(DownloadError, match="sha256 .* expected 0{64}"):
        fetch([url], tmp_path / "f.bin", sha256="0" * 64, **FAST)
    assert sorted(os.listdir(tmp_path)) == []


def test_wrong_sha1_on_first_mirror_falls_back_to_the_second(data_server, tmp_path):
    wrong = data_server.add("m1/D1.gif", b"not the texture")
    right = data_server.add("m2/D1.gif", PAYLOAD)
    done = fetch([wrong, right], tmp_path / "D1.gif", sha1=sha1(PAYLOAD), **FAST)
    assert done.source == right and done.verified


def test_unreachable_host_gives_one_message_with_urls_and_the_local_option(tmp_path):
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    urls = [f"http://127.0.0.1:{port}/BSDS300-images.tgz", f"http://127.0.0.1:{port}/old/BSDS300-images.tgz"]
    with pytest.raises(DownloadError) as err:
        fetch(urls, tmp_path / "BSDS300-images.tgz", retries=2, backoff=0.01, timeout=2, progress=False)
    text = str(err.value)
    assert "\n" not in text
    for needle in urls + ["local:", "config/datasets.yaml", "Mirrors tried in order"]:
        assert needle in text


def test_unverified_checksum_is_recorded_and_compared_with_the_published_one(data_server, tmp_path):
    url = data_server.add("f.bin", PAYLOAD)
    done = fetch([url], tmp_path / "f.bin", published_sha256="1" * 64, **FAST)
    assert done.sha256 == sha256(PAYLOAD) and done.verified is False and done.matches_published is False
    done = fetch([url], tmp_path / "g.bin", published_sha256=sha256(PAYLOAD), **FAST)
    assert done.matches_published is True


def test_local_copy_is_verified_and_needs_no_network(tmp_path):
    local = tmp_path / "mine.gif"
    local.write_bytes(PAYLOAD)
    done = fetch([], tmp_path / "out" / "D104.gif", sha1=sha1(PAYLOAD), local=local, **FAST)
    assert done.source == f"local:{local}" and (tmp_path / "out" / "D104.gif").read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="local copy is not the expected file"):
        fetch([], tmp_path / "out" / "D34.gif", sha1="0" * 40, local=local, **FAST)
    with pytest.raises(DownloadError, match="no such file"):
        fetch([], tmp_path / "x", local=tmp_path / "missing.tgz", **FAST)


# --------------------------------------------------------------------------------------------
# archives
# --------------------------------------------------------------------------------------------


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


def test_extract_good_archive(tmp_path):
    arc = tmp_path / "a.tgz"
    arc.write_bytes(tar_bytes({"top/x.txt": b"x", "top/sub/y.txt": b"y"}))
    out = extract(arc, tmp_path / "out")
    assert (out / "top" / "sub" / "y.txt").read_bytes() == b"y"


@pytest.mark.parametrize("name, kind, target, why", [
    ("../evil.txt", tarfile.REGTYPE, "", "'..' component"),
    ("a/../../evil.txt", tarfile.REGTYPE, "", "'..' component"),
    ("/etc/evil.txt", tarfile.REGTYPE, "", "absolute path"),
    ("a/link", tarfile.SYMTYPE, "../../outside", "outside the target"),
    ("a/link", tarfile.SYMTYPE, "/etc/passwd", "outside the target"),
    ("a/hard", tarfile.LNKTYPE, "../x", "outside the target"),
    ("dev", tarfile.CHRTYPE, "", "device"),
])
def test_unsafe_members_are_refused(tmp_path, name, kind, target, why):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    data = b""
    if kind == tarfile.REGTYPE:
        data = b"evil"
        info.size = len(data)
    arc = tmp_path / "bad.tgz"
    arc.write_bytes(_tar_with(info, data))
    with pytest.raises(ArchiveError, match=why):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_link_inside_the_archive_is_fine(tmp_path):
    info = tarfile.TarInfo("a/b/link")
    info.type, info.linkname = tarfile.SYMTYPE, "../x.txt"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = tarfile.TarInfo("a/x.txt")
        data.size = 1
        tf.addfile(data, io.BytesIO(b"x"))
        tf.addfile(info)
    arc = tmp_path / "ok.tgz"
    arc.write_bytes(buf.getvalue())
    assert sorted(check_members(arc)) == ["a/b/link", "a/x.txt"]


def test_zip_with_parent_member_is_refused(tmp_path):
    arc = tmp_path / "bad.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("ok.txt", b"1")
        zf.writestr("../evil.txt", b"2")
    with pytest.raises(ArchiveError, match="'..' component"):
        extract(arc, tmp_path / "out")


def test_truncated_archive_is_refused_and_nothing_is_left(tmp_path):
    full = tar_bytes({f"d/f{k}.bin": np.random.default_rng(k).bytes(50_000) for k in range(4)})
    arc = tmp_path / "cut.tgz"
    arc.write_bytes(full[: len(full) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract(arc, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tgz"]


def test_cli_download_failure_is_one_line_and_exit_code_4(tmp_path, capsys, data_server):
    from ride.cli import main

    url = data_server.url("missing.tgz")
    code = main(["download", "--url", url, "--out", str(tmp_path / "x.tgz"), "--retries", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 4 and err.count("\n") == 0 and url in err and "HTTP 404" in err and "--local" in err
    good = data_server.add("there.tgz", PAYLOAD)
    assert main(["download", "--url", good, "--out", str(tmp_path / "y.tgz"), "--no-progress"]) == 0
    assert "(no checksum configured: recorded, not verified)" in capsys.readouterr().out
