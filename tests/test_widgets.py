"""The dashboards of segnb.widgets, driven headless as a user would: set widget values, click buttons, then check what they
show (image bytes, chart data, progress bars, messages) and what happened (checkpoints, downloads, conversions)."""
import hashlib, io, threading, time, zipfile
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from fastai.callback.core import Callback

from segnb.data.core import SegMeta, seg_dataloaders, SegDataError
from segnb.data.synthetic import synthetic_scenes, SyntheticScenes, SYNTHETIC_META
from segnb.widgets import (DatasetExplorer, DownloadDashboard, TrainingDashboard, ResultsViewer, OpenVocabPlayground,
                           process_ui_events, parse_queries, overlay_mask, class_iou, seg_image_stats)


def png_size(b): return Image.open(io.BytesIO(bytes(b))).size
def is_png(b): return bytes(b).startswith(b"\x89PNG")


# ---------------------------------------------------------------- DatasetExplorer
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = synthetic_scenes(12, size=32, seed=0, root=tmp_path_factory.mktemp("d") / "scenes")
    return root


def _broken_copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    bad = np.zeros((32, 32), np.uint8); bad[:4] = 9
    Image.fromarray(bad).save(dst / "ann_dir/train/00002.png")            # a label that is no class
    (dst / "ann_dir/train/00005.png").write_bytes(b"\x89PNG broken")       # unreadable
    return dst


def test_explorer_browse_filter_sort_and_problems(scenes, tmp_path):
    root = _broken_copy(scenes, tmp_path / "broken")
    ex = DatasetExplorer(root)                                              # background scan
    assert ex.wait(60) and ex.scanned
    assert set(ex.sources) == {"train", "val"} and ex.kind == "seg" and ex.has_depth
    probs = dict(ex.problems())
    assert "labels out of range" in probs[2] and "unreadable" in probs[5], probs
    # problems jump to their image and say what is wrong
    k = [i for i, _ in ex.problems()].index(2)
    ex.problems_dd.value = k
    assert ex.index == 2 and "labels out of range" in ex.status.value
    # the class frequencies are the pixel counts of the readable masks
    counts = np.zeros(6, np.int64)
    for p in sorted((root / "ann_dir/train").glob("*.png")):
        try: m = np.asarray(Image.open(p))
        except Exception: continue
        counts += np.bincount(m[m < 6].ravel(), minlength=6)
    f = ex.class_frequencies()
    np.testing.assert_allclose(f["pixel_pct"], 100 * counts / counts.sum())
    assert png_size(ex.chart.value)[0] > 100
    # filter to a class, sort by its share
    ring = SYNTHETIC_META.classes.index("ring")
    before = ex.image.value
    ex.class_dd.value = ring
    ex.sort_dd.value = "most of the class"
    st = ex.stats
    assert len(ex.view) == int((st.counts[:, ring] > 0).sum()) and all(st.counts[i, ring] > 0 for i in ex.view)
    share = st.counts[ex.view, ring] / st.counts[ex.view].sum(1)
    assert (np.diff(share) <= 0).all()
    assert ex.index == ex.view[0] and ex.image.value != before
    assert ex.chart_data["classes"][ring] == "ring"
    # opacity redraws the overlay; next/previous move through the filtered view
    img0 = ex.image.value
    ex.alpha.value = 0.0
    raw = np.asarray(Image.open(io.BytesIO(bytes(ex.image.value))).convert("RGB"))
    k = ex.max_size // 32                                                   # small images are enlarged by a whole factor
    assert raw.shape == (32 * k, 32 * k, 3) and ex.image.value != img0
    assert (raw[::k, ::k] == np.asarray(Image.open(root / "img_dir/train" / f"{ex.index:05d}.png").convert("RGB"))).all()
    if len(ex.view) > 1:
        ex.next_btn.click(); assert ex.index == ex.view[1]
        ex.prev_btn.click(); assert ex.index == ex.view[0]
    # the legend lists the classes of the image shown with their shares
    assert "ring" in ex.legend.value and "%" in ex.legend.value
    # the other split
    ex.split_dd.value = "val"
    assert ex.split == "val" and len(ex.view) == len(ex.sources["val"]) or ex.class_dd.value >= 0
    assert is_png(ex.depth_image.value)


def test_explorer_rarest_first_and_dataloaders(scenes):
    dls = seg_dataloaders(scenes, bs=4)
    ex = DatasetExplorer(dls, background=False)
    assert set(ex.sources) == {"train", "valid"} and ex.meta.classes == SYNTHETIC_META.classes
    ex.sort_dd.value = "rarest classes first"
    st = ex.stats; freq = st.counts.sum(0) / st.counts.sum()
    rare = [freq[st.counts[i] > 0].min() for i in ex.view]
    assert rare == sorted(rare)


def test_explorer_depth_only():
    from segnb.data.depth import DepthView
    ds = DepthView(SyntheticScenes(6, size=32, seed=2, depth=True))
    ex = DatasetExplorer(ds, background=False)
    assert ex.kind == "depth" and ex.has_depth and ex.meta is None
    assert is_png(ex.depth_image.value) and ex.legend.value == ""
    ex.sort_dd.value = "nearest (mean depth)"
    means = ex.stats.depth_mean[ex.view]
    assert (np.diff(means) >= 0).all() and ex.index == ex.view[0]
    assert len(ex.chart_data["mean_depth"]) == 6


def test_explorer_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"): DatasetExplorer(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="known layout"): DatasetExplorer(tmp_path / "x")
    ds = [(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8).view(__import__("fastai.torch_core", fromlist=["ArrayMask"]).ArrayMask))]
    with pytest.raises(SegDataError, match="no SegMeta"): DatasetExplorer(ds)


# ---------------------------------------------------------------- DownloadDashboard
class Server:
    "Loopback HTTP server for `files` (name -> bytes); `delay` seconds between 4 KB chunks; honours Range; records requests."
    def __init__(self, files, delay=0.0):
        self.files, self.delay, self.requests = dict(files), delay, []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def do_GET(self):
                name = self.path.lstrip("/"); outer.requests.append((name, self.headers.get("Range")))
                data = outer.files.get(name)
                if data is None:
                    self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                if start:
                    self.send_response(206); self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else: self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start)); self.end_headers()
                try:
                    for k in range(start, len(data), 4096):
                        self.wfile.write(data[k:k + 4096]); self.wfile.flush()
                        if outer.delay: time.sleep(outer.delay)
                except (BrokenPipeError, ConnectionResetError): pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H); self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    def url(self, name): return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"
    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *a): self.httpd.shutdown(); self.httpd.server_close(); self.thread.join(5)


def _png(a, fmt="PNG"):
    b = io.BytesIO(); Image.fromarray(a).save(b, fmt); return b.getvalue()


def _chase_zip(noise=0):
    "A tiny CHASEDB1.zip: 3 images with two vessel annotations each (+ `noise` bytes of an incompressible member)."
    rng = np.random.default_rng(0); b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for k in ("01L", "01R", "02L"):
            z.writestr(f"Image_{k}.jpg", _png(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), "JPEG"))
            for a in ("1stHO", "2ndHO"): z.writestr(f"Image_{k}_{a}.png", _png((rng.random((12, 16)) > 0.5).astype(np.uint8) * 255))
        if noise: z.writestr("padding.bin", rng.integers(0, 255, noise, dtype=np.uint8).tobytes())
    return b.getvalue()


def _entry(name, *sources):
    from segnb.data.catalog import dataset_info
    return dataset_info(name).with_sources(*sources)


def test_download_convert_with_progress_and_layout(tmp_path):
    from segnb.data.catalog import Source
    data = _chase_zip(noise=60_000)
    with Server({"CHASEDB1.zip": data}) as srv:
        info = _entry("chase_db1", Source("CHASEDB1.zip", srv.url("CHASEDB1.zip"), size=len(data),
                                          checksum="sha256:" + hashlib.sha256(data).hexdigest(), extract=False))
        dd = DownloadDashboard(root=tmp_path / "data", datasets=[info, "ade20k"], retries=0, timeout=(3, 10))
        assert "CHASE" in dd.card.value and "licence" in dd.card.value and "CHASEDB1.zip" in dd.card.value
        assert set(dd.bars) == {"CHASEDB1.zip", "(convert)"}
        dd.download_btn.click()
        assert dd.wait(60), "download did not finish"
    assert dd.error.value == "", dd.error.value
    bar, lbl = dd.bars["CHASEDB1.zip"]
    assert bar.value == 1.0 and "downloaded" in lbl.value and bar.bar_style == "success"
    cbar, clbl = dd.bars["(convert)"]
    assert cbar.value == 1.0 and "9 written" in clbl.value, clbl.value
    assert dd.overall.value == 1.0 and dd.overall.bar_style == "success"
    assert (tmp_path / "data/CHASE_DB1/images/training").is_dir()
    found = dict(dd.layout_findings)
    assert found["training"].startswith("3 image/mask pairs") or found["training"].startswith("2 image/mask pairs"), found
    assert "layout check" in dd.result.value and not dd.download_btn.disabled and dd.cancel_btn.disabled
    # choosing another entry shows its card and its files
    dd.name_dd.value = "ade20k"
    assert "ADE20K" in dd.card.value and "(convert)" not in dd.bars


def test_download_errors_are_shown(tmp_path):
    from segnb.data.catalog import Source
    with Server({}) as srv:
        dd = DownloadDashboard(root=tmp_path, datasets=[_entry("chase_db1", Source("CHASEDB1.zip", srv.url("CHASEDB1.zip"), extract=False))],
                               retries=0, timeout=(3, 5))
        dd.start(); dd.wait(30)
    assert "404" in dd.error.value and dd.overall.bar_style == "danger" and not dd.download_btn.disabled
    from segnb.data.catalog import dataset_info
    man = dataset_info("cityscapes")
    assert man.requires_login
    dd = DownloadDashboard(root=tmp_path, datasets=[man])
    assert "by hand" in dd.card.value
    dd.download_btn.click(); dd.wait(30)
    assert "download yourself" in dd.error.value and "leftImg8bit" in dd.error.value, dd.error.value


def test_download_cancel_then_resume(tmp_path):
    from segnb.data.catalog import Source
    data = _chase_zip(noise=400_000)
    with Server({"CHASEDB1.zip": data}, delay=0.01) as srv:
        info = _entry("chase_db1", Source("CHASEDB1.zip", srv.url("CHASEDB1.zip"), size=len(data), extract=False))
        dd = DownloadDashboard(root=tmp_path, datasets=[info], retries=0, timeout=(3, 10))
        dd.convert_cb.value = False
        dd.download_btn.click()
        t0 = time.time()
        while dd.bars["CHASEDB1.zip"][0].value == 0 and time.time() - t0 < 20: time.sleep(0.02)
        dd.cancel_btn.click(); assert dd.wait(30)
        part = tmp_path / "downloads/chase_db1/CHASEDB1.zip.part"
        assert "cancelled" in dd.status.value and part.exists() and 0 < part.stat().st_size < len(data)
        assert dd.overall.bar_style == "warning" and dd.error.value == ""
        got = part.stat().st_size
        srv.delay = 0
        dd.download_btn.click(); assert dd.wait(30)
    assert dd.error.value == "" and (tmp_path / "downloads/chase_db1/CHASEDB1.zip").read_bytes() == data
    assert srv.requests[-1] == ("CHASEDB1.zip", f"bytes={got}-")                 # resumed, not restarted
    assert "convert it with" in dd.status.value


# ---------------------------------------------------------------- TrainingDashboard
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from segnb.learner import seg_learner
    root = synthetic_scenes(10, size=32, seed=3, root=tmp_path_factory.mktemp("t") / "scenes")
    dls = seg_dataloaders(root, bs=4, shuffle=False)
    torch.manual_seed(0)
    learn = seg_learner(dls, "segformer", backbone="test_resnet.r160_in1k", path=tmp_path_factory.mktemp("run"))
    return learn


class ClickAt(Callback):
    order = 60
    def __init__(self, button, k): self.button, self.k = button, k
    def after_batch(self):
        if self.training and self.learn.train_iter == self.k: self.button.click()


def test_training_dashboard_stop_checkpoint_and_resume(tiny):
    from segnb.callbacks import find_latest_checkpoint, load_checkpoint
    from segnb.registry import CALLBACKS
    assert CALLBACKS.get("TrainingDashboard") is TrainingDashboard
    learn = tiny
    dash = TrainingDashboard(refresh=0, n_preds=2)
    fig, lines = dash.fig, (dash.train_line, dash.valid_line)
    learn.fit_iters(12, val_interval=2, lr=1e-3, cbs=[dash, ClickAt(dash.stop_button, 3)])
    assert learn.train_iter == 3 and dash.stop_requested
    h = dash.history
    assert h["iter"] == [1, 2, 3] and h["valid_iter"] == [2] and len(h["lr"]) == 3 and "mIoU" in h["metrics"]
    # one figure, updated in place
    assert dash.fig is fig and (dash.train_line, dash.valid_line) == lines and list(dash.train_line.get_ydata()) == h["loss"]
    assert png_size(dash.curves.value)[0] > 300 and png_size(dash.preds.value)[1] > 2 * 32
    assert "iter <b>3</b>/12" in dash.status.value and "ETA" in dash.status.value and "lr" in dash.status.value
    assert dash.progress.value == pytest.approx(3 / 12) and dash.stop_button.description == "stopped"
    ck_dir = Path(learn.path) / learn.model_dir
    ck = find_latest_checkpoint(ck_dir)
    assert ck == dash.stop_path and load_checkpoint(ck)["meta"]["iter"] == 3 and "stopped" in dash.message.value
    # resume from the stop checkpoint and finish
    dash2 = TrainingDashboard(refresh=0, n_preds=0)
    learn.fit_iters(5, val_interval=2, lr=1e-3, resume_from=ck_dir, cbs=[dash2])
    assert learn.train_iter == 5 and dash2.history["iter"] == [4, 5] and dash2.stop_button.description == "finished"
    assert dash2.progress.value == 1.0


def test_training_dashboard_stop_from_another_thread(tiny):
    learn = tiny
    dash = TrainingDashboard(refresh=0.5, n_preds=1, checkpoint=False)
    class Slow(Callback):
        def after_batch(self): time.sleep(0.05)
    def clicker():                                  # a click from another thread once two batches of this fit are done
        t0 = time.time()
        while len(dash.history["iter"]) < 2 and time.time() - t0 < 120: time.sleep(0.005)
        dash.stop_button.click()
    t = threading.Thread(target=clicker, daemon=True); t.start()
    learn.fit(3, 1e-3, cbs=[dash, Slow()])
    t.join(5)
    n = len(dash.history["iter"])
    assert 2 <= n < 3 * len(learn.dls.train) and learn.train_iter == n and dash.stop_requested and dash.stop_path is None


def test_process_ui_events_outside_a_kernel():
    assert process_ui_events() == 0


# ---------------------------------------------------------------- ResultsViewer
def test_results_viewer_matches_interpretation(tiny):
    learn = tiny
    rv = ResultsViewer(learn, progress=False)
    ref = learn.interpret()
    torch.testing.assert_close(rv.losses, ref.losses, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rv.ious, ref.ious, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rv.interp.confusion_matrix(), ref.confusion_matrix())
    assert rv.order_dd.value == "worst loss" and rv.shown == int(rv.losses.argmax())
    assert all(is_png(p.value) for p in rv.panels) and "overall: aAcc" in rv.summary.value
    # the error panel is red exactly where the prediction is wrong
    img, t, p = rv.item(rv.shown)
    err = np.asarray(Image.open(io.BytesIO(bytes(rv.panels[3].value))).convert("RGB"))
    k = err.shape[0] // t.shape[0]; err = err[::k, ::k]
    wrong = ((p != t) & (t != 255)).numpy()
    assert ((err == [235, 40, 40]).all(-1) == wrong).all()
    rv.order_dd.value = "worst mIoU"
    assert rv.shown == int(np.nanargmin(rv.ious.numpy()))
    rv.next_btn.click(); assert rv.slider.value == 1
    # class click-through: the class list is sorted by IoU; choosing one lists its images, worst IoU first
    chart = rv.chart_a.value
    k = rv.class_sel.options[1][1]
    rv.class_sel.value = k
    v = rv.class_ious[rv.ranks, k].numpy()
    assert len(v) and (np.diff(v) >= 0).all() and not np.isnan(v).any() and rv.shown == int(rv.ranks[0])
    assert rv.chart_a.value != chart and "IoU of" in rv.info.value
    rv.order_dd.value = "file order"
    assert rv.class_sel.value == -1 and list(rv.ranks) == list(range(rv.n))
    # a Segmenter (segnb.inference) over the same data gives the same numbers
    from segnb.inference import Segmenter
    sv = ResultsViewer(Segmenter.from_learner(learn), learn.dls.valid, progress=False)
    torch.testing.assert_close(sv.ious, rv.ious, rtol=1e-4, atol=1e-5)


def test_seg_image_stats_by_hand():
    logits = torch.zeros(1, 3, 2, 2); logits[0, 1, 0, :] = 5; logits[0, 2, 1, 1] = 5     # pred [[1,1],[0,2]]
    t = torch.tensor([[[1, 0], [255, 2]]])
    loss, i, g, pa = seg_image_stats(logits, t, 3)
    assert i.tolist() == [[0, 1, 1]] and g.tolist() == [[1, 1, 1]] and pa.tolist() == [[0, 2, 1]]
    iou = class_iou(i, g, pa)[0]
    assert iou[0] == 0 and iou[1] == 0.5 and iou[2] == 1


def test_results_viewer_depth():
    from segnb.data.depth import depth_dataloaders, DepthView
    from segnb.registry import MODELS
    dls = depth_dataloaders((DepthView(SyntheticScenes(4, 32, seed=0, depth=True)), DepthView(SyntheticScenes(5, 32, seed=0, split="val", depth=True))), bs=2)
    torch.manual_seed(0)
    m = MODELS.build(dict(type="DepthEstimator", backbone=dict(type="TimmBackbone", model_name="test_resnet", out_indices=(1, 2, 3, 4)),
                          decode_head=dict(type="DepthConvHead", in_channels=[32, 48, 192, 96], channels=16, min_depth=0.5, max_depth=10.0)))
    rv = ResultsViewer(m, dls.valid, progress=False)
    assert rv.kind == "depth" and rv.n == 5 and rv.depth_stats.shape == (5, 3)
    from segnb.metrics import DepthMetric
    ref = DepthMetric(["abs_rel"])
    m.eval()
    with torch.no_grad():
        for xb, yb in dls.valid: ref.update(m(xb), yb)
    assert rv.metric.compute(sync=False)["abs_rel"] == pytest.approx(ref.compute(sync=False)["abs_rel"], rel=1e-6)
    assert rv.shown == int(rv.depth_stats[:, 0].argmax()) and "AbsRel" in rv.info.value
    assert all(is_png(p.value) for p in rv.panels)
    rv.order_dd.value = "worst RMSE"; assert rv.shown == int(rv.depth_stats[:, 1].argmax())


# ---------------------------------------------------------------- OpenVocabPlayground
@pytest.fixture(scope="module")
def maskclip():
    from segnb.models.clip import MaskCLIP
    torch.manual_seed(0)
    return MaskCLIP("tiny-test-ViT", pretrained=None, templates="photo")


def test_openvocab_upload_and_queries(maskclip, tmp_path):
    scene = SyntheticScenes(2, size=64, seed=1)[0][0]
    p = tmp_path / "scene.png"; Image.fromarray(np.asarray(scene)).save(p)
    ov = OpenVocabPlayground(maskclip, images=[p], queries="sky, grass")
    assert ov.result["queries"] == ["sky", "grass"] and ov.result["scores"].shape == (2, 64, 64) and len(ov.maps.children) == 2
    x = maskclip.normalize(torch.from_numpy(np.asarray(scene)).permute(2, 0, 1)[None].float() / 255)
    np.testing.assert_array_equal(ov.result["labels"], maskclip.predict(x, ["sky", "grass"])[0].numpy())
    first = ov.image.value
    ov.query_txt.value = "sky, grass, circle"
    assert len(ov.maps.children) == 3 and ov.image.value != first and "3 queries" in ov.status.value
    assert "circle" in ov.legend.value
    # an upload becomes the current image and is segmented with the current queries
    up = np.zeros((48, 40, 3), np.uint8); up[:, 20:] = 255
    b = io.BytesIO(); Image.fromarray(up).save(b, "PNG")
    ov.upload.value = ({"name": "up.png", "type": "image/png", "size": len(b.getvalue()), "content": memoryview(b.getvalue()),
                        "last_modified": datetime.now()},)
    assert ov.image_dd.value == "up.png" and ov.result["scores"].shape == (3, 48, 40)
    w, h = png_size(ov.image.value); assert w * 48 == h * 40 and h == 384
    # bad input is reported in the status line
    ov.query_txt.value = " , "
    assert "type one or more" in ov.status.value
    ov.upload.value = ({"name": "x.png", "type": "image/png", "size": 3, "content": memoryview(b"bad"), "last_modified": datetime.now()},)
    assert "cannot read x.png" in ov.status.value


def test_openvocab_any_predictor():
    class Fake:
        def predict(self, img, queries):
            h, w = img.shape[:2]
            s = np.stack([np.full((h, w), k, np.float32) for k in range(len(queries))])
            s[0, :, : w // 2] = 99
            return {"label_map": s.argmax(0), "score_maps": s}
    ov = OpenVocabPlayground(Fake(), images={"a": np.zeros((8, 10, 3), np.uint8)}, queries="x, y")
    assert (ov.result["labels"][:, :5] == 0).all() and (ov.result["labels"][:, 5:] == 1).all()
    class Broken:
        def predict(self, img, queries): raise RuntimeError("model exploded")
    ov = OpenVocabPlayground(Broken(), images={"a": np.zeros((8, 10, 3), np.uint8)}, queries="x")
    assert "model exploded" in ov.status.value and ov.result is None
    assert parse_queries("a, b,, a ,c  d") == ["a", "b", "c d"]


def test_openvocab_with_openvocab_segmenter():
    import segnb.openvocab as ov_mod
    seg = ov_mod.OpenVocabSegmenter("tiny-test-ViT", pretrained=None, templates="photo")
    img = np.asarray(SyntheticScenes(2, size=48, seed=1)[0][0])
    ov = OpenVocabPlayground(seg, images={"scene": img}, queries="sky, grass, ball")
    ref = seg.predict(img, ["sky", "grass", "ball"])
    np.testing.assert_array_equal(ov.result["labels"], ref.labels)
    np.testing.assert_allclose(ov.result["scores"], ref.scores, rtol=1e-5, atol=1e-6)
    assert len(ov.maps.children) == 3 and "3 queries" in ov.status.value


def test_results_viewer_depth_and_multitask_learners(scenes):
    "Whole-set numbers equal the learner's own validation metrics (same DepthMeta range/crop); task= picks the multi-task output."
    from segnb.depth_learner import depth_learner, multitask_learner
    from segnb.data.depth import depth_dataloaders, DepthView
    dls = depth_dataloaders((DepthView(SyntheticScenes(4, 32, seed=0, depth=True)), DepthView(SyntheticScenes(3, 32, seed=0, split="val", depth=True))), bs=3)
    torch.manual_seed(0)
    learn = depth_learner(dls, backbone="test_resnet.r160_in1k")
    dash = TrainingDashboard(refresh=0, n_preds=2)                       # depth previews are colour-mapped depth maps
    with learn.no_bar(): learn.fit_iters(2, val_interval=2, lr=1e-3, cbs=[dash])
    assert "abs_rel" in dash.history["metrics"] and png_size(dash.preds.value)[1] > 2 * 32
    res = dict(zip(["valid_loss"] + [m.name for m in learn.metrics], learn.validate()))
    rv = ResultsViewer(learn, progress=False)
    got = rv.metric.compute(sync=False)
    assert rv.kind == "depth" and got["abs_rel"] == pytest.approx(res["abs_rel"], rel=1e-5) and got["rmse"] == pytest.approx(res["rmse"], rel=1e-5)
    mt = multitask_learner(seg_dataloaders(scenes, bs=3, depth_dir="depth_dir"), seg_arch="fcn", backbone="test_resnet.r160_in1k")
    res = dict(zip(["valid_loss"] + [m.name for m in mt.metrics], mt.validate()))
    seg, dep = ResultsViewer(mt, progress=False), ResultsViewer(mt, progress=False, task="depth")
    assert seg.kind == "seg" and dep.kind == "depth"
    assert seg.metric.compute(sync=False)["mIoU"] == pytest.approx(res["mIoU"], rel=1e-5)
    assert dep.metric.compute(sync=False)["abs_rel"] == pytest.approx(res["abs_rel"], rel=1e-5)
    assert all(is_png(p.value) for p in dep.panels + seg.panels)
    with pytest.raises(ValueError, match="task"): ResultsViewer(learn, progress=False, task="seg")
