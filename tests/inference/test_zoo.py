"""CellTypist's models by name, from a server on 127.0.0.1 serving the published layout
(models.json + one .pkl per model): list, get, predict with celltypist:NAME, offline, unknown
names, interrupted downloads."""

import http.server
import json
import threading

import numpy as np
import pytest

import sclabel
from conftest import run, shared_file
from sclabel.errors import InputError
from sclabel.inference import zoo

PKL = "celltypist_models/ref_pbmc_clean_celltypist_model_AIFI_L3_2024-04-19.pkl"


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    cut_next: set[str]  # paths whose next response stops halfway
    requests: list[tuple[str, str | None]]


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in server.cut_next:
            server.cut_next.discard(self.path)
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server(tmp_path, monkeypatch):
    pkl = shared_file(PKL).read_bytes()
    srv = _Server(("127.0.0.1", 0), _Handler)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    index = {
        "models": [
            {
                "filename": "Immune_AIFI_L3.pkl",
                "url": f"{base}/models/AIFI/v1/Immune_AIFI_L3.pkl",
                "version": "v1",
                "date": "2024-04-19",
                "details": "PBMC level 3",
                "No_celltypes": 71,
                "source": "https://example.org/aifi",
                "default": True,
            },
            {
                "filename": "Immune_All_Low.pkl",
                "url": f"{base}/models/Pan/v2/Immune_All_Low.pkl",
                "details": "not served",
            },
        ]
    }
    srv.files = {
        "/models/models.json": json.dumps(index).encode(),
        "/models/AIFI/v1/Immune_AIFI_L3.pkl": pkl,
    }
    srv.cut_next, srv.requests = set(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SCLABEL_CELLTYPIST_INDEX", f"{base}/models/models.json")
    monkeypatch.setenv("SCLABEL_CACHE", str(tmp_path / "cache"))
    yield srv
    srv.shutdown()
    srv.server_close()


def test_list_and_get_by_name_give_the_file_imports_labels(server, tmp_path):
    listed = run("models", "list")
    assert listed.returncode == 0, listed.stderr
    assert "Immune_AIFI_L3" in listed.stdout and "Immune_All_Low" in listed.stdout
    got = run("models", "get", "Immune_AIFI_L3")
    assert got.returncode == 0, got.stderr
    folder = tmp_path / "cache" / "celltypist" / "Immune_AIFI_L3"
    assert (folder / "config.json").is_file() and (folder / "README.md").is_file()
    assert not list((tmp_path / "cache").rglob("*.part"))
    kang = sclabel.read(shared_file("kang_pbmc_stim.h5ad"))[:300].copy()
    by_name = sclabel.Model.load("celltypist:Immune_AIFI_L3").predict(kang, progress=False)
    by_file = sclabel.import_celltypist(shared_file(PKL)).predict(kang, progress=False)
    assert (by_name.labels == by_file.labels).all()
    np.testing.assert_allclose(by_name.probabilities, by_file.probabilities, atol=1e-6)
    source = sclabel.Model.load(folder).metrics["imported_from"]
    assert source["url"].endswith("Immune_AIFI_L3.pkl") and len(source["sha256"]) == 64
    assert "https://example.org/aifi" in (folder / "README.md").read_text()


def test_predict_with_a_model_name_fetches_it_once(server, tmp_path):
    kang = sclabel.read(shared_file("kang_pbmc_stim.h5ad"))[:200].copy()
    kang.write_h5ad(tmp_path / "q.h5ad")
    for out in ("a.csv", "b.csv"):
        result = run("predict", tmp_path / "q.h5ad", "--model", "celltypist:immune_aifi_l3",
                     "--out", tmp_path / out)  # fmt: skip
        assert result.returncode == 0, result.stderr
    downloads = [p for p, _ in server.requests if p.endswith(".pkl")]
    assert len(downloads) == 1  # the second run used the converted copy
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_an_unknown_name_lists_close_names(server, tmp_path):
    result = run("models", "get", "Immune_All_Lo")
    assert result.returncode == 2
    assert "no CellTypist model named 'Immune_All_Lo'; did you mean Immune_All_Low" in (
        result.stderr
    )
    assert not (tmp_path / "cache" / "celltypist" / "Immune_All_Lo").exists()


def test_offline_says_what_to_do_in_one_line(monkeypatch, tmp_path):
    with _free_port() as port:
        monkeypatch.setenv("SCLABEL_CELLTYPIST_INDEX", f"http://127.0.0.1:{port}/models.json")
    monkeypatch.setenv("SCLABEL_CACHE", str(tmp_path / "cache"))
    result = run("models", "get", "Immune_All_Low")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot download" in result.stderr and "import-celltypist" in result.stderr


def test_an_interrupted_download_leaves_no_model_and_resumes(server, tmp_path):
    path = "/models/AIFI/v1/Immune_AIFI_L3.pkl"
    server.cut_next.add(path)
    with pytest.raises(InputError, match="stopped at .* bytes; run the same command again"):
        zoo.fetch("Immune_AIFI_L3")
    files = tmp_path / "cache" / "celltypist" / "files"
    assert not (files / "Immune_AIFI_L3.pkl").exists()  # never a half file under its name
    assert (files / "Immune_AIFI_L3.pkl.part").stat().st_size == len(server.files[path]) // 2
    folder = zoo.fetch("Immune_AIFI_L3")
    assert server.requests[-1][1] == f"bytes={len(server.files[path]) // 2}-"  # resumed
    assert (files / "Immune_AIFI_L3.pkl").read_bytes() == server.files[path]
    assert (folder / "config.json").is_file()


def test_a_digest_mismatch_deletes_the_file(server, tmp_path):
    index = json.loads(server.files["/models/models.json"])
    index["models"][0]["md5"] = "0" * 32
    server.files["/models/models.json"] = json.dumps(index).encode()
    with pytest.raises(InputError, match="md5 .* does not match"):
        zoo.fetch("Immune_AIFI_L3")
    assert not list((tmp_path / "cache").rglob("*.pkl*"))


class _free_port:
    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]  # bound but not listening: connections are refused

    def __exit__(self, *exc):
        self.sock.close()
