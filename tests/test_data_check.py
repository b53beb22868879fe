"`segnb check-data` on a folder with one fault of each kind: each reported by file, exit status 1; a clean folder passes."
import sys
import numpy as np
from pathlib import Path
from PIL import Image
from conftest import run_cli
from segnb.data.core import SegMeta

def faulty(root: Path) -> Path:
    meta = SegMeta(["background", "road", "car"]); meta.save(root / "meta.json")
    rng = np.random.RandomState(0)
    def pair(split, name, size=(24, 32), mask=None, img=True):
        for d in ("img_dir", "ann_dir"): (root / d / split).mkdir(parents=True, exist_ok=True)
        if img: Image.fromarray(rng.randint(0, 255, (*size, 3), dtype=np.uint8)).save(root / "img_dir" / split / f"{name}.jpg")
        m = rng.randint(0, 3, size).astype(np.uint8) if mask is None else mask
        if m is not False: Image.fromarray(m).save(root / "ann_dir" / split / f"{name}.png")
    for i in range(2): pair("train", f"ok{i}")
    pair("val", "ok_val")
    pair("train", "truncated"); p = root / "img_dir/train/truncated.jpg"; p.write_bytes(p.read_bytes()[:150])
    pair("train", "lonely_image", mask=False)
    pair("train", "lonely_mask", img=False)
    pair("train", "mismatch"); Image.fromarray(np.zeros((20, 32), np.uint8)).save(root / "ann_dir/train/mismatch.png")
    pair("train", "label9", mask=np.full((24, 32), 9, np.uint8))
    pair("train", "colour", mask=np.full((24, 32, 3), (1, 2, 3), np.uint8))
    Image.open(root / "ann_dir/train/ok0.png").convert("RGB").save(root / "ann_dir/train/ok0.png")  # gray-as-RGB: fine
    for d in ("img_dir", "ann_dir"): (root / d / "test").mkdir()
    return root

def test_check_data_reports_each_fault_by_file(tmp_path):
    root = faulty(tmp_path)
    r = run_cli("check-data", root)
    assert r.returncode == 1, r.stderr
    out = r.stdout
    lines = {ln.split()[2].rsplit("/", 1)[-1]: ln for ln in out.splitlines() if ln.startswith(("error", "warning"))}
    assert "unreadable image" in lines["truncated.jpg"]
    assert "missing mask" in lines["lonely_image.jpg"]
    assert "missing image" in lines["lonely_mask.png"]
    assert "size mismatch" in lines["mismatch.png"] and "32x20" in lines["mismatch.png"]
    assert "labels out of range" in lines["label9.png"] and "[9]" in lines["label9.png"]
    assert "unknown colours" in lines["colour.png"] and "(1,2,3)" in lines["colour.png"]
    assert "empty split" in lines["test"]
    assert not any(k.startswith("ok") for k in lines), lines.keys()
    assert "class frequencies" in out and "road" in out

def test_check_data_clean_folder_and_reduce_zero_label(tmp_path):
    root = tmp_path
    SegMeta(["a", "b"]).save(root / "meta.json")
    for s in ("train", "val"):
        for d in ("img_dir", "ann_dir"): (root / d / s).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "img_dir" / s / "x.png")
        Image.fromarray((np.eye(8) * 2).astype(np.uint8)).save(root / "ann_dir" / s / "x.png")  # labels 0 and 2
    r = run_cli("check-data", root)
    assert r.returncode == 1 and "set reduce_zero_label" in r.stdout
    r = run_cli("check-data", root, "--reduce-zero-label")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 error(s)" in r.stdout
