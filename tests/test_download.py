"""segnb.data.download against a loopback HTTP server started here (127.0.0.1, port 0): resume after a dropped
connection, servers that ignore Range, checksum mismatch, malicious archives, zip bombs, idempotent re-runs,
manual (login) files, Hugging Face datasets saved to disk, and `segnb link` / `segnb download` on the command line."""
import hashlib, io, json, os, socket, tarfile, threading, zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segnb.data.catalog import CATALOG, Source, dataset_info
from segnb.data.download import (ChecksumError, DownloadError, ManualDownloadRequired, UnsafeArchiveError, dataset_root,
                                 download_dataset, download_url, file_hash, link_dataset, linked_datasets, safe_extract,
                                 unlink_dataset)
from conftest import run_cli
from segnb.cli import main as segnb_main


def cli(capsys, *args):
    "Run `segnb ARGS` in this process; returns (exit code, stdout, stderr)."
    try: code = segnb_main([str(a) for a in args])
    except SystemExit as e: code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err

FAST = dict(progress=False, verbose=False, retries=2, backoff=0.0, timeout=(3, 5))


class Server:
    """Threaded loopback server for `files` (name -> bytes). Behaviour switches: `range_ok` (honour Range),
    `drop_first` (the first GET of a file sends half the body then closes the socket). Records every request."""

    def __init__(self, files, range_ok=True, drop_first=False):
        self.files, self.range_ok, self.drop_first = dict(files), range_ok, drop_first
        self.requests, self.dropped = [], set()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                data = outer.files.get(name)
                if data is None:
                    self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
                rng = self.headers.get("Range")
                if outer.drop_first and name not in outer.dropped:
                    outer.dropped.add(name)
                    self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
                    self.wfile.write(data[: len(data) // 2]); self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR); self.close_connection = True
                    return
                if rng and outer.range_ok:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416); self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0"); self.end_headers(); return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    self.send_header("Content-Length", str(len(data) - start)); self.end_headers()
                    self.wfile.write(data[start:]); return
                self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name): return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"
    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *a):
        self.httpd.shutdown(); self.httpd.server_close(); self.thread.join(timeout=5)


def _png(arr, fmt="PNG"):
    b = io.BytesIO(); Image.fromarray(arr).save(b, fmt); return b.getvalue()


def _ade_members():
    "A tiny ADEChallengeData2016 tree: name -> bytes."
    out = {}
    for split in ("training", "validation"):
        for i in range(2):
            out[f"ADEChallengeData2016/images/{split}/ADE_{i}.jpg"] = _png(np.full((8, 8, 3), 30 * i, np.uint8), "JPEG")
            out[f"ADEChallengeData2016/annotations/{split}/ADE_{i}.png"] = _png(np.full((8, 8), i + 1, np.uint8))
    return out


def _archive(fmt, members):
    b = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
            for n, d in members.items(): z.writestr(n, d)
    else:
        mode = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz", "tar.bz2": "w:bz2"}[fmt]
        with tarfile.open(fileobj=b, mode=mode) as t:
            for n, d in members.items():
                ti = tarfile.TarInfo(n); ti.size = len(d); t.addfile(ti, io.BytesIO(d))
    return b.getvalue()


def _sha256(b): return "sha256:" + hashlib.sha256(b).hexdigest()


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar.gz", "tgz", "tar.bz2"])
def test_download_extract_each_format(tmp_path, fmt):
    data = _archive(fmt, _ade_members())
    fname = f"ADEChallengeData2016.{fmt}"
    with Server({fname: data}) as srv:
        info = dataset_info("ade20k").with_sources(Source(fname, srv.url(fname), size=len(data), checksum=_sha256(data), extract_to="ade"))
        out = download_dataset(info, tmp_path, **FAST)
    assert out == tmp_path / "ade/ADEChallengeData2016"
    assert sorted(p.name for p in (out / "annotations/validation").iterdir()) == ["ADE_0.png", "ADE_1.png"]
    assert np.array(Image.open(out / "annotations/training/ADE_1.png")).max() == 2
    # the dataset is usable through the registry right away
    from segnb.registry import DATASETS
    ds = DATASETS.build({"type": "ADE20KDataset", "data_root": str(out), "split": "train"})
    assert len(ds) == 2 and ds.meta.num_classes == 150


def test_resume_after_dropped_connection(tmp_path):
    data = os.urandom(300_000)
    with Server({"big.bin": data}, drop_first=True) as srv:
        p = download_url(srv.url("big.bin"), tmp_path / "big.bin", checksum="md5:" + hashlib.md5(data).hexdigest(), **FAST)
        reqs = list(srv.requests)
    assert p.read_bytes() == data and not (tmp_path / "big.bin.part").exists()
    assert reqs[0] == ("big.bin", None)
    # the second request resumes from the bytes that reached the disk (at most the half the server sent)
    assert len(reqs) == 2 and reqs[1][1].startswith("bytes=") and reqs[1][1].endswith("-"), reqs
    assert 0 < int(reqs[1][1][6:-1]) <= len(data) // 2, reqs


def test_server_that_ignores_range_restarts(tmp_path):
    data = os.urandom(100_000)
    part = tmp_path / "f.bin.part"; part.write_bytes(data[:40_000])             # a partial file from an earlier run
    with Server({"f.bin": data}, range_ok=False) as srv:
        p = download_url(srv.url("f.bin"), tmp_path / "f.bin", checksum=_sha256(data), **FAST)
        assert srv.requests == [("f.bin", "bytes=40000-")]
    assert p.read_bytes() == data                                                # not prefix + whole file


def test_drop_then_ignore_range(tmp_path):
    data = os.urandom(50_000)
    with Server({"f.bin": data}, range_ok=False, drop_first=True) as srv:
        p = download_url(srv.url("f.bin"), tmp_path / "f.bin", size=len(data), checksum=_sha256(data), **FAST)
    assert p.read_bytes() == data


def test_complete_part_file_answered_416(tmp_path):
    data = os.urandom(10_000)
    (tmp_path / "f.bin.part").write_bytes(data)
    with Server({"f.bin": data}) as srv:
        download_url(srv.url("f.bin"), tmp_path / "f.bin", checksum=_sha256(data), **FAST)
        assert srv.requests == [("f.bin", "bytes=10000-")]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_checksum_mismatch_deletes_file(tmp_path):
    data = b"x" * 5000
    with Server({"f.zip": data}) as srv:
        with pytest.raises(ChecksumError, match="deleted") as e:
            download_url(srv.url("f.zip"), tmp_path / "f.zip", checksum="md5:" + "0" * 32, **FAST)
        assert "md5 of f.zip" in str(e.value) and hashlib.md5(data).hexdigest() in str(e.value)
        with pytest.raises(ChecksumError, match="bytes, expected"):
            download_url(srv.url("f.zip"), tmp_path / "g.zip", size=1234, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_clear(tmp_path):
    with Server({}) as srv:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download_url(srv.url("missing.zip"), tmp_path / "m.zip", **FAST)


def _tar_with(*infos):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as t:
        for ti, payload in infos: t.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    return b.getvalue()


def _ti(name, payload=b"", **kw):
    ti = tarfile.TarInfo(name); ti.size = len(payload)
    for k, v in kw.items(): setattr(ti, k, v)
    return ti, payload if ti.isreg() else None


def _zip_symlink(name, target):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("good.txt", b"fine")
        zi = zipfile.ZipInfo(name); zi.external_attr = (0o120777 << 16); z.writestr(zi, target)
    return b.getvalue()


MALICIOUS = {
    "dotdot.tar": (_tar_with(_ti("ok.txt", b"ok"), _ti("../escape.txt", b"evil")), "path traversal"),
    "nested_dotdot.zip": (_archive("zip", {"ok.txt": b"ok", "a/../../escape.txt": b"evil"}), "path traversal"),
    "absolute.tar": (_tar_with(_ti("ok.txt", b"ok"), _ti("/tmp/segnb_escape.txt", b"evil")), "absolute path"),
    "absolute.zip": (_archive("zip", {"ok.txt": b"ok", "/tmp/segnb_escape.txt": b"evil"}), "absolute path"),
    "symlink_out.tar": (_tar_with(_ti("ok.txt", b"ok"), _ti("link", type=tarfile.SYMTYPE, linkname="../../etc")), "outside"),
    "symlink_abs.tar": (_tar_with(_ti("link", type=tarfile.SYMTYPE, linkname="/etc/passwd")), "absolute path"),
    "hardlink_out.tar": (_tar_with(_ti("ok.txt", b"ok"), _ti("hl", type=tarfile.LNKTYPE, linkname="../outside.txt")), "path traversal"),
    "symlink_out.zip": (_zip_symlink("link", "../../outside"), "outside"),
    "device.tar": (_tar_with(_ti("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)), "device"),
}


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_archive_rejected(tmp_path, name):
    data, msg = MALICIOUS[name]
    dest = tmp_path / "root" / "out"
    arc = tmp_path / name; arc.write_bytes(data)
    with pytest.raises(UnsafeArchiveError, match=msg):
        safe_extract(arc, dest, verbose=False)
    assert not dest.exists() or not any(dest.rglob("*")), "nothing may be written from a rejected archive"
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "root" / "escape.txt").exists()
    assert not Path("/tmp/segnb_escape.txt").exists()


def test_malicious_archive_through_download(tmp_path):
    data, _ = MALICIOUS["symlink_out.tar"]
    with Server({"evil.tar": data}) as srv:
        info = dataset_info("ade20k").with_sources(Source("evil.tar", srv.url("evil.tar"), extract_to="ade"))
        with pytest.raises(UnsafeArchiveError, match="outside"):
            download_dataset(info, tmp_path, **FAST)
    assert not (tmp_path / "downloads/ade20k/.complete.json").exists()


def test_internal_links_are_kept(tmp_path):
    data = _tar_with(_ti("d/real.txt", b"hello"), _ti("d/alias", type=tarfile.SYMTYPE, linkname="real.txt"),
                     _ti("d/copy", type=tarfile.LNKTYPE, linkname="d/real.txt"))
    arc = tmp_path / "ok.tar"; arc.write_bytes(data)
    safe_extract(arc, tmp_path / "out", verbose=False)
    assert (tmp_path / "out/d/alias").is_symlink() and (tmp_path / "out/d/alias").read_text() == "hello"
    assert (tmp_path / "out/d/copy").read_text() == "hello"


def test_zip_bomb_and_size_limit(tmp_path):
    arc = tmp_path / "bomb.zip"
    with zipfile.ZipFile(arc, "w", zipfile.ZIP_DEFLATED) as z: z.writestr("zeros.bin", b"\0" * (8 << 20))
    assert arc.stat().st_size < 100_000
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        safe_extract(arc, tmp_path / "o1", max_ratio=50, ratio_floor=1 << 20, verbose=False)
    with pytest.raises(UnsafeArchiveError, match="max_size"):
        safe_extract(arc, tmp_path / "o2", max_size=1 << 20, verbose=False)
    assert not (tmp_path / "o1/zeros.bin").exists() and not (tmp_path / "o2/zeros.bin").exists()
    safe_extract(arc, tmp_path / "o3", verbose=False)          # under the default floor it is just a big file
    assert (tmp_path / "o3/zeros.bin").stat().st_size == 8 << 20


def test_strip_components(tmp_path):
    arc = tmp_path / "b.tgz"; arc.write_bytes(_archive("tgz", {"benchmark_RELEASE/dataset/train.txt": b"a\n"}))
    safe_extract(arc, tmp_path / "VOCaug", strip_components=1, verbose=False)
    assert (tmp_path / "VOCaug/dataset/train.txt").read_text() == "a\n"


def test_rerun_downloads_nothing(tmp_path):
    data = _archive("zip", _ade_members())
    with Server({"a.zip": data}) as srv:
        info = dataset_info("ade20k").with_sources(Source("a.zip", srv.url("a.zip"), checksum=_sha256(data), extract_to="ade"))
        download_dataset(info, tmp_path, **FAST)
        assert len(srv.requests) == 1
        stamp = (tmp_path / "ade/ADEChallengeData2016/images/training/ADE_0.jpg").stat().st_mtime_ns
        download_dataset(info, tmp_path, **FAST)                       # marker: nothing at all
        assert len(srv.requests) == 1
        (tmp_path / "downloads/ade20k/.complete.json").unlink()       # no dataset marker: checksum + extraction marker
        download_dataset(info, tmp_path, **FAST)
        assert len(srv.requests) == 1
        assert (tmp_path / "ade/ADEChallengeData2016/images/training/ADE_0.jpg").stat().st_mtime_ns == stamp
        # a corrupted archive on disk is detected by its checksum, deleted and fetched again
        (tmp_path / "downloads/ade20k/.complete.json").unlink()
        (tmp_path / "downloads/ade20k/a.zip").write_bytes(b"garbage")
        download_dataset(info, tmp_path, **FAST)
        assert len(srv.requests) == 2
        assert file_hash(tmp_path / "downloads/ade20k/a.zip", "sha256") == _sha256(data).split(":")[1]


def test_manual_download_instructions_then_pickup(tmp_path):
    info = dataset_info("cityscapes")
    with pytest.raises(ManualDownloadRequired) as e:
        download_dataset(info, tmp_path, **FAST)
    msg = str(e.value)
    assert "cityscapes-dataset.com" in msg and str(tmp_path / "downloads/cityscapes/gtFine_trainvaltest.zip") in msg
    assert isinstance(e.value, FileNotFoundError)
    dl = tmp_path / "downloads/cityscapes"; dl.mkdir(parents=True)
    lab = np.full((4, 8), 7, np.uint8)
    (dl / "gtFine_trainvaltest.zip").write_bytes(_archive("zip", {"gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png": _png(lab)}))
    (dl / "leftImg8bit_trainvaltest.zip").write_bytes(
        _archive("zip", {"leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png": _png(np.zeros((4, 8, 3), np.uint8))}))
    out = download_dataset(info, tmp_path, **FAST)
    assert (out / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").exists()
    assert (out / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png").exists()


def test_hf_dataset_materialised_offline(tmp_path):
    import datasets
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    rng = np.random.default_rng(0)
    def split(n):
        imgs = [Image.fromarray(rng.integers(0, 255, (6, 10, 3), dtype=np.uint8)) for _ in range(n)]
        masks = [Image.fromarray(np.full((6, 10), k + 1, np.uint8)) for k in range(n)]
        return datasets.Dataset.from_dict({"image": imgs, "annotation": masks}).cast_column("image", datasets.Image()).cast_column("annotation", datasets.Image())
    dd = datasets.DatasetDict({"train": split(3), "validation": split(2)})
    dd.save_to_disk(str(tmp_path / "hf_saved"))
    info = dataset_info("ade20k").with_sources(Source("hf", hf_id=str(tmp_path / "hf_saved")))
    out = download_dataset(info, tmp_path / "data", **FAST)
    assert sorted(p.name for p in (out / "images/training").iterdir()) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert sorted(p.name for p in (out / "annotations/validation").iterdir()) == ["000000.png", "000001.png"]
    assert np.array(Image.open(out / "annotations/training/000002.png")).tolist() == np.full((6, 10), 3).tolist()
    assert download_dataset(info, tmp_path / "data", **FAST) == out      # marker: nothing redone


def test_link_registry_and_cli(tmp_path, monkeypatch, capsys):
    reg = tmp_path / "reg.json"
    monkeypatch.setenv("SEGNB_DATA_REGISTRY", str(reg))
    root = tmp_path / "shared/ADEChallengeData2016"
    for d in ("images/training", "annotations/training"): (root / d).mkdir(parents=True)
    link_dataset("ade20k", root)
    assert json.loads(reg.read_text()) == {"datasets": {"ade20k": str(root.resolve())}}
    assert dataset_root("ADE20KDataset") == root.resolve()
    with pytest.raises(FileNotFoundError, match="expected split folders"):
        link_dataset("voc2012", root)
    assert unlink_dataset("ade20k") and linked_datasets() == {}
    code, out, err = cli(capsys, "link", "ade20k", root)
    assert code == 0, err
    code, out, _ = cli(capsys, "link", "--list")
    assert "ade20k" in out and str(root.resolve()) in out
    code, _, err = cli(capsys, "link", "cityscapes", tmp_path / "nowhere")
    assert code == 2 and "is not a folder" in err
    r = run_cli("link", "--remove", "ade20k", env={"SEGNB_DATA_REGISTRY": str(reg)}, cwd=tmp_path)   # the console script
    assert r.returncode == 0 and "link removed" in r.stdout and linked_datasets() == {}
    (root.parent / "gone").mkdir(); link_dataset("mine", root.parent / "gone"); (root.parent / "gone").rmdir()
    with pytest.raises(FileNotFoundError, match="folder is gone"):
        dataset_root("mine")


def test_cli_download_messages(tmp_path, capsys):
    code, out, _ = cli(capsys, "download", "--list")
    assert code == 0 and "| `cityscapes` |" in out and "| `voc_aug` |" in out
    code, _, err = cli(capsys, "download", "cityscape")
    assert code == 2 and "did you mean 'cityscapes'" in err
    code, out, _ = cli(capsys, "download", "voc_aug", "--info")
    assert code == 0 and "trainaug.txt" in out and "6a5a2918" in out
    r = run_cli("download", "cityscapes", "--root", str(tmp_path / "d"), cwd=tmp_path)          # the console script
    assert r.returncode == 2 and "gtFine_trainvaltest.zip" in r.stderr and "Traceback" not in r.stderr
