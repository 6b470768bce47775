"""Downloading: against a local HTTP server on 127.0.0.1 only (no other network traffic, ever)."""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import tinymoe.data as data
from tinymoe.data import tinyimagenet


class _Server:
    """Serves `payload` at any path, honouring `Range: bytes=N-` unless told not to; records requests."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.honour_range = True
        self.cut_after = None  # send only this many bytes of the body, then drop the connection
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(dict(self.headers))
                if not self.path.endswith(".zip"):
                    self.send_error(404, "Not Found")
                    return
                body, status = server.payload, 200
                wanted = self.headers.get("Range")
                if wanted and server.honour_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    body, status = body[start:], 206
                    self.send_response(status)
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                else:
                    self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tiny-imagenet-200.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served_zip(tiny_zip):
    """(server, zip bytes, md5, expected arrays): the small official-layout zip on a loopback server."""
    zip_path, expected = tiny_zip
    payload = zip_path.read_bytes()
    server = _Server(payload)
    yield server, payload, hashlib.md5(payload).hexdigest(), expected
    server.close()


def test_download_then_load(served_zip, tmp_path):
    server, payload, md5, expected = served_zip
    root = tmp_path / "data"
    path = data.download_tiny_imagenet(root, url=server.url, md5=md5, size=len(payload))
    assert path == root / "tiny-imagenet-200.zip" and path.read_bytes() == payload
    assert not (root / "tiny-imagenet-200.zip.part").exists()
    images, labels = data.load_tiny_imagenet(root, "val", cache=False)
    np.testing.assert_array_equal(images, expected["val"][0])
    # Present and verified: a second call does not download again.
    data.download_tiny_imagenet(root, url=server.url, md5=md5, size=len(payload))
    assert len(server.requests) == 1


def test_dataset_download_true_uses_the_module_constants(served_zip, tmp_path, monkeypatch):
    server, payload, md5, expected = served_zip
    monkeypatch.setattr(tinyimagenet, "TINY_IMAGENET_URL", server.url)
    monkeypatch.setattr(tinyimagenet, "TINY_IMAGENET_MD5", md5)
    monkeypatch.setattr(tinyimagenet, "TINY_IMAGENET_SIZE", len(payload))
    with pytest.raises(data.DatasetNotFoundError):
        data.TinyImageNet(tmp_path / "fresh", "train")  # download=False: no request is made
    assert server.requests == []
    ds = data.TinyImageNet(tmp_path / "fresh", "train", download=True, cache=False)
    assert ds.download and len(ds) == 36 and len(server.requests) == 1
    np.testing.assert_array_equal(ds.images, expected["train"][0])


def test_resume_from_a_partial_file(served_zip, tmp_path):
    server, payload, md5, _ = served_zip
    dest = tmp_path / "tiny-imagenet-200.zip"
    (tmp_path / "tiny-imagenet-200.zip.part").write_bytes(payload[:1000])
    data.download_url(server.url, dest, md5=md5, size=len(payload))
    assert dest.read_bytes() == payload
    assert server.requests[0]["Range"] == "bytes=1000-"


def test_server_ignoring_the_range_restarts_from_zero(served_zip, tmp_path):
    server, payload, md5, _ = served_zip
    server.honour_range = False
    dest = tmp_path / "tiny-imagenet-200.zip"
    (tmp_path / "tiny-imagenet-200.zip.part").write_bytes(payload[:1000])
    data.download_url(server.url, dest, md5=md5, size=len(payload))
    assert dest.read_bytes() == payload  # not the first 1000 bytes twice


def test_interrupted_download_keeps_the_part_and_resumes(served_zip, tmp_path):
    server, payload, md5, _ = served_zip
    dest = tmp_path / "tiny-imagenet-200.zip"
    server.cut_after = 3000
    with pytest.raises(data.DownloadError, match="resume"):
        data.download_url(server.url, dest, md5=md5, size=len(payload))
    part = tmp_path / "tiny-imagenet-200.zip.part"
    assert not dest.exists() and part.read_bytes() == payload[:3000]
    server.cut_after = None
    data.download_url(server.url, dest, md5=md5, size=len(payload))
    assert dest.read_bytes() == payload and server.requests[-1]["Range"] == "bytes=3000-"


def test_checksum_mismatch_deletes_the_bad_file(served_zip, tmp_path):
    server, payload, md5, _ = served_zip
    dest = tmp_path / "tiny-imagenet-200.zip"
    wrong = "0" * 32
    with pytest.raises(data.ChecksumError) as info:
        data.download_url(server.url, dest, md5=wrong, size=len(payload))
    assert md5 in str(info.value) and wrong in str(info.value)
    assert not dest.exists() and not (tmp_path / "tiny-imagenet-200.zip.part").exists()
    with pytest.raises(data.DatasetNotFoundError):  # nothing is left that looks like a dataset
        data.find_tiny_imagenet(tmp_path)


def test_corrupt_partial_file_is_caught_by_the_checksum(served_zip, tmp_path):
    server, payload, md5, _ = served_zip
    dest = tmp_path / "tiny-imagenet-200.zip"
    (tmp_path / "tiny-imagenet-200.zip.part").write_bytes(b"\0" * 1000)  # not a prefix of the real file
    with pytest.raises(data.ChecksumError):
        data.download_url(server.url, dest, md5=md5, size=len(payload))
    assert not dest.exists() and not (tmp_path / "tiny-imagenet-200.zip.part").exists()
    data.download_url(server.url, dest, md5=md5, size=len(payload))  # the retry starts clean and succeeds
    assert dest.read_bytes() == payload


def test_existing_file_with_wrong_checksum_is_left_alone(served_zip, tmp_path):
    server, payload, md5, _ = served_zip
    dest = tmp_path / "tiny-imagenet-200.zip"
    dest.write_bytes(b"a user's own file")
    with pytest.raises(data.ChecksumError, match="left alone"):
        data.download_url(server.url, dest, md5=md5)
    assert dest.read_bytes() == b"a user's own file" and server.requests == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
    with socket.socket() as probe:  # a loopback port with nobody listening: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(data.DownloadError) as info:
        data.download_tiny_imagenet(tmp_path, url=f"http://127.0.0.1:{port}/tiny-imagenet-200.zip", md5="0" * 32,
                                    size=1234)
    message = str(info.value)
    assert str(tmp_path / "tiny-imagenet-200.zip") in message and "--data" in message and "offline" in message


def test_http_error_is_reported(served_zip, tmp_path):
    server, payload, md5, _ = served_zip
    with pytest.raises(data.DownloadError, match="HTTP 404"):
        data.download_url(server.url.replace(".zip", ".txt"), tmp_path / "x.zip", md5=md5)
    assert not (tmp_path / "x.zip").exists()


def test_part_longer_than_the_file_is_discarded(served_zip, tmp_path):
    server, payload, md5, _ = served_zip
    (tmp_path / "x.zip.part").write_bytes(payload + b"extra")  # longer than the file: discarded, restart
    data.download_url(server.url, tmp_path / "x.zip", md5=md5, size=len(payload))
    assert (tmp_path / "x.zip").read_bytes() == payload and "Range" not in server.requests[-1]


def test_file_md5_matches_hashlib(tmp_path):
    blob = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # spans several read chunks
    (tmp_path / "blob").write_bytes(blob)
    assert data.file_md5(tmp_path / "blob") == hashlib.md5(blob).hexdigest()
