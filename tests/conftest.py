"""Shared fixtures.

``data_server``: an HTTP server on 127.0.0.1 (a thread of http.server) that serves files from
memory, answers ``Range: bytes=N-`` with 206, and injects faults on request: ``drop`` (send the
headers and half the body, then close the connection), ``404``, ``500``, ``norange`` (ignore the
Range header), ``gzip-label`` (send ``Content-Encoding: gzip`` with a .tgz). ``fake_sources``: small files in the layout of each real data source (a
BSDS300-shaped .tgz with JPEGs and id lists, .iml files, Brodatz GIFs, a MAF-layout archive).
"""
from __future__ import annotations

import contextlib

import hashlib
import io
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h5py
import numpy as np
import pytest
from PIL import Image


@dataclass
class DataServer:
    """Files served at ``url(path)``; ``faults[path]`` is a queue consumed one request at a time."""

    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add(self, path: str, data: bytes, *faults: str) -> str:
        self.files["/" + path.lstrip("/")] = data
        self.faults["/" + path.lstrip("/")] = list(faults)
        return self.url(path)


def _handler(server: DataServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            rng = self.headers.get("Range")
            server.requests.append((self.path, rng))
            queue = server.faults.get(self.path) or []
            fault = queue.pop(0) if queue else None
            if self.path not in server.files or fault == "404":
                self.send_error(404)
                return
            if fault == "500":
                self.send_error(500)
                return
            data = server.files[self.path]
            start = int(rng.removeprefix("bytes=").split("-")[0]) if rng and fault != "norange" else 0
            if start >= len(data) and start > 0:
                self.send_error(416)
                return
            body = data[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            if fault == "gzip-label":  # as some servers label .tgz files
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            if fault == "drop":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def serve_data():
    """A :class:`DataServer` on 127.0.0.1 in a thread, for the ``with`` block (tests and the smoke
    reference script of Tables 1-2)."""
    server = DataServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def data_server():
    with serve_data() as server:
        yield server


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def jpeg_bytes(rng: np.random.Generator, shape: tuple[int, int]) -> bytes:
    """A colour JPEG with smooth content (so that it compresses like a photograph)."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = 128 + 60 * np.sin(x / 5.0 + rng.random() * 6) * np.cos(y / 7.0)
    rgb = np.stack([base + 30 * rng.random(shape) for _ in range(3)], axis=-1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class FakeSources:
    bsds_tgz: bytes
    bsds_ids: dict[str, list[str]]
    bsds_gray: dict[str, np.ndarray]
    iml: dict[int, bytes]
    gifs: dict[str, bytes]
    maf_tgz: bytes
    maf_rows: dict[str, np.ndarray]


def make_fake_sources(num_train: int = 6, num_test: int = 3, iml_numbers: tuple[int, ...] = (1, 2, 80),
                      textures: tuple[str, ...] = ("D104", "D34")) -> FakeSources:
    rng = np.random.default_rng(1234)
    train_ids = [str(100000 + 7 * k) for k in range(num_train)]
    test_ids = [str(200000 + 11 * k) for k in range(num_test)]
    members, gray = {}, {}
    for folder, ids in (("train", train_ids), ("test", test_ids)):
        for k, iid in enumerate(ids):
            shape = (32, 48) if k % 3 else (48, 32)  # both orientations, like 321x481 and 481x321
            data = jpeg_bytes(rng, shape)
            members[f"BSDS300/images/{folder}/{iid}.jpg"] = data
            gray[iid] = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    members["BSDS300/iids_train.txt"] = ("\n".join(train_ids) + "\n").encode()
    members["BSDS300/iids_test.txt"] = ("\n".join(test_ids) + "\n").encode()
    iml = {n: rng.integers(0, 4096, size=(1024, 1536)).astype(">u2").tobytes() for n in iml_numbers}
    gifs = {}
    for name in textures:
        img = (rng.random((640, 640)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, format="GIF")
        gifs[name] = buf.getvalue()
    rows = {k: rng.standard_normal((n, 63)).astype(np.float64) for k, n in
            (("train", 3000), ("validation", 500), ("test", 1000))}
    h5 = io.BytesIO()
    with h5py.File(h5, "w") as fh:
        for key, value in rows.items():
            fh.create_dataset(key, data=value)
    maf = tar_bytes({"data/BSDS300/BSDS300.hdf5": h5.getvalue(), "data/power/data.npy": b"\x00" * 100})
    return FakeSources(tar_bytes(members), {"train": train_ids, "test": test_ids}, gray, iml, gifs, maf, rows)


@pytest.fixture(scope="session")
def fake_sources() -> FakeSources:
    return make_fake_sources()


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one thread avoids OpenMP/intra-op oversubscription on a shared machine.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
