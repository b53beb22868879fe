"Segmenter end to end: run folders, checkpoints, inputs of every kind, the CLI, depth/multi-task models, bad input."
import importlib.util, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch, torch.nn as nn
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from segnb.config import Config
from segnb.data.core import SegMeta, load_mask
from segnb.data.synthetic import synthetic_scenes, SYNTHETIC_META
from segnb.inference import (Segmenter, Predictions, save_run, tiny_model, TINY_MODEL_CFG, find_run_checkpoint, build_model,
                             load_model_weights, VideoBackendError, list_images, model_task, fresh_model)

PIPE = [dict(type="Resize", scale=[64, 64], keep_ratio=True)]

@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return synthetic_scenes(10, size=64, seed=3, root=tmp_path_factory.mktemp("scenes"))

@pytest.fixture(scope="module")
def run(tmp_path_factory, scenes):
    cfg = dict(model=TINY_MODEL_CFG, data=dict(val_pipeline=PIPE, data_root=str(scenes)))
    return save_run(tiny_model(seed=1), tmp_path_factory.mktemp("run"), cfg, meta=SYNTHETIC_META)

def _ref_labels(run_dir, img, ck=None):
    "The plain model on the prepared image, logits resized to the image: what the predictor must reproduce."
    seg = Segmenter.from_run(run_dir, optimize=False)
    m = build_model(Config.fromfile(Path(run_dir) / "config.yaml"))
    load_model_weights(m, ck or find_run_checkpoint(run_dir)); m.eval()
    x, _ = seg.pre(img)
    with torch.no_grad(): lg = m(x[None])
    return torch.nn.functional.interpolate(lg, size=img.shape[:2], mode="bilinear").argmax(1)[0].numpy()

def test_best_checkpoint_is_chosen(tmp_path, scenes):
    "A run with several checkpoints: metrics.json's best wins over the newer latest one, `latest` and a named file also work."
    cfg = dict(model=TINY_MODEL_CFG, data=dict(val_pipeline=PIPE))
    run = save_run(tiny_model(seed=1), tmp_path / "r", cfg, meta=SYNTHETIC_META, name="best_mIoU_iter_10.pth")
    save_run(tiny_model(seed=2), tmp_path / "r", cfg, name="iter_20.pth")
    (run / "checkpoints" / "last_checkpoint").write_text("iter_20.pth")
    (run / "metrics.json").write_text(json.dumps({"checkpoint_best": "/elsewhere/checkpoints/best_mIoU_iter_10.pth"}))
    assert find_run_checkpoint(run).name == "best_mIoU_iter_10.pth"          # found in the moved run folder
    assert find_run_checkpoint(run, "latest").name == "iter_20.pth"
    img = np.asarray(Image.open(scenes / "img_dir" / "val" / "00000.png"))
    for which, name in (("best", "best_mIoU_iter_10.pth"), ("latest", "iter_20.pth")):
        got = Segmenter.from_run(run, checkpoint=which).predict(img).labels
        ref = _ref_labels(run, img, run / "checkpoints" / name)
        assert (got == ref).mean() > 0.999
    with pytest.raises(FileNotFoundError, match="not found"): find_run_checkpoint(run, "nope.pth")

def test_inputs_of_every_kind_agree(run, scenes):
    seg = Segmenter.from_run(run)
    p = scenes / "img_dir" / "val" / "00001.png"
    img = np.asarray(Image.open(p))
    ref = _ref_labels(run, img)
    outs = [seg.predict(p), seg.predict(str(p)), seg.predict(img), seg.predict(Image.open(p)),
            seg.predict(torch.from_numpy(img).permute(2, 0, 1))]           # uint8 (C, H, W) tensor = a raw picture
    for o in outs: assert (o.labels == ref).mean() > 0.999
    batch = seg.predict(np.stack([img, img]))
    assert isinstance(batch, Predictions) and len(batch) == 2 and (batch[1].labels == outs[0].labels).all()
    x, _ = seg.pre(img)
    assert (seg.predict(x).labels == outs[0].labels).mean() > 0.999           # a float tensor is a prepared input
    assert (seg.predict(x[None])[0].labels == outs[0].labels).mean() > 0.999

def test_folder_mixed_sizes_batched_equals_one_by_one(tmp_path, run, scenes):
    "Images of different sizes in one folder: grouped by prepared size, each result at its own size, same as one by one."
    d = tmp_path / "imgs"; d.mkdir()
    srcs = sorted((scenes / "img_dir" / "train").glob("*.png"))
    for i, s in enumerate(srcs):
        im = Image.open(s)
        if i % 3 == 1: im = im.resize((80, 48))
        if i % 3 == 2: im = im.resize((40, 72))
        im.save(d / f"im{i}.png")
    (d / "notes.txt").write_text("not an image")
    seg = Segmenter.from_run(run, batch_size=3, num_workers=2)
    res = seg.predict(d)
    files = list_images(d)
    assert [r.name for r in res] == [f.stem for f in files]
    one = Segmenter.from_run(run, num_workers=0)
    for f, r in zip(files, res):
        img = np.asarray(Image.open(f))
        assert r.labels.shape == img.shape[:2]
        assert (r.labels == one.predict(img).labels).all()

def test_cli_predict_folder_and_errors(tmp_path, run, scenes, capsys):
    from segnb.cli import main
    out = tmp_path / "out"
    assert main(["predict", str(run), str(scenes / "img_dir" / "val"), "--out", str(out)]) == 0
    n = len(list((scenes / "img_dir" / "val").glob("*.png")))
    assert len(list(out.glob("*_overlay.png"))) == n
    labels = sorted(p for p in out.glob("*.png") if not p.stem.endswith("_overlay"))
    assert len(labels) == n
    img = np.asarray(Image.open(scenes / "img_dir" / "val" / "00000.png"))
    assert (np.asarray(load_mask(out / "00000.png", SYNTHETIC_META)) == _ref_labels(run, img)).mean() > 0.999
    capsys.readouterr()
    assert main(["predict", str(tmp_path), str(scenes), "--out", str(out)]) == 2
    assert "expected a run folder" in capsys.readouterr().err

def test_slide_mode_from_config(tmp_path, scenes):
    "A `slide` test_cfg in the config is what the predictor runs."
    mc = dict(TINY_MODEL_CFG, test_cfg=dict(mode="slide", crop_size=[32, 32], stride=[24, 24]))
    run = save_run(tiny_model(seed=4), tmp_path / "slide", dict(model=mc, data=dict(val_pipeline=PIPE)), meta=SYNTHETIC_META)
    seg = Segmenter.from_run(run)
    assert seg.raw_model.test_cfg["mode"] == "slide"
    img = np.asarray(Image.open(scenes / "img_dir" / "val" / "00000.png"))
    assert (seg.predict(img).labels == _ref_labels(run, img)).mean() > 0.999

def test_binary_sigmoid_model(tmp_path, scenes):
    mc = dict(TINY_MODEL_CFG, decode_head=dict(TINY_MODEL_CFG["decode_head"], num_classes=2, out_channels=1, threshold=0.5,
                                               loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=True)))
    torch.manual_seed(0)
    from segnb.registry import MODELS
    run = save_run(MODELS.build(mc), tmp_path / "bin", dict(model=mc), meta=["bg", "fg"])
    r = Segmenter.from_run(run).predict(np.asarray(Image.open(scenes / "img_dir" / "val" / "00000.png")), return_probs=True)
    assert set(np.unique(r.labels)) <= {0, 1} and r.probs.shape[0] == 2
    assert ((r.probs[1] > 0.5) == (r.labels == 1)).all()

def test_video_backend_error_or_write(tmp_path, run, scenes):
    import imageio.v3 as iio
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted((scenes / "img_dir" / "train").glob("*.png"))[:4]])
    iio.imwrite(tmp_path / "c.gif", frames, plugin="pillow", duration=100, loop=0)
    seg = Segmenter.from_run(run)
    v = seg.predict(tmp_path / "c.gif", out=tmp_path / "o.gif", keep=True)
    assert v.n_frames == 4 and len(v.results) == 4 and iio.improps(v.path, plugin="pillow").shape[0] == 4
    back = [f[..., :3] for f in iio.imiter(tmp_path / "c.gif", plugin="pillow")]      # GIF frames are palette-quantised
    assert (v.results[2].labels == seg.predict(back[2]).labels).all()
    if importlib.util.find_spec("av") is None and importlib.util.find_spec("imageio_ffmpeg") is None:
        with pytest.raises(VideoBackendError, match="pip install av"): seg.predict(tmp_path / "c.gif", out=tmp_path / "o.mp4")
        assert not (tmp_path / "o.mp4").exists()

def test_depth_and_multitask_models(tmp_path, scenes):
    "The real depth models (segnb.models.depth) through the same predictor: metres out, 16-bit PNG round trip."
    bb = dict(type="TimmBackbone", model_name="test_resnet.r160_in1k", output_stride=8)
    head = dict(type="DepthConvHead", in_channels=[32, 48, 96], in_index=[1, 2, 4], channels=16, max_depth=10.0)
    dc = dict(type="DepthEstimator", backbone=bb, decode_head=head)
    from segnb.registry import MODELS
    torch.manual_seed(0)
    dm = MODELS.build(dc)
    run = save_run(dm, tmp_path / "depth", dict(model=dc, data=dict(val_pipeline=PIPE)), meta=SYNTHETIC_META)
    seg = Segmenter.from_run(run)
    assert seg.task == "depth"
    img = np.asarray(Image.open(scenes / "img_dir" / "val" / "00000.png"))
    r = seg.predict(img)
    assert r.labels is None and r.depth.shape == img.shape[:2] and np.isfinite(r.depth).all()
    assert 0 < r.depth.min() and r.depth.max() <= 10.0
    m = build_model(Config.fromfile(run / "config.yaml")); load_model_weights(m, find_run_checkpoint(run)); m.eval()
    with torch.no_grad(): ref = m(seg.pre(img)[0][None])[0, 0].numpy()
    np.testing.assert_allclose(r.depth, ref, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
    p = r.save(tmp_path / "dout", name="x")["depth"]
    np.testing.assert_allclose(np.asarray(Image.open(p)).astype(np.float32) / 1000, r.depth, atol=1e-3)
    mc = dict(type="MultiTaskSegmentor", backbone=bb, depth_head=head,
              decode_head=dict(type="FCNHead", in_channels=96, in_index=-1, channels=16, num_convs=1, num_classes=6, dropout_ratio=0.0))
    mm = MODELS.build(mc)
    run2 = save_run(mm, tmp_path / "multi", dict(model=mc, data=dict(val_pipeline=PIPE)), meta=SYNTHETIC_META)
    s2 = Segmenter.from_run(run2)
    r2 = s2.predict(img)
    assert s2.task == "multi" and r2.labels.shape == r2.depth.shape == img.shape[:2]

def test_bad_inputs(tmp_path, run):
    seg = Segmenter.from_run(run)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot read"): seg.predict(tmp_path / "broken.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"): seg.predict(tmp_path / "empty")
    with pytest.raises(TypeError, match="cannot predict"): seg.predict(12)
    with pytest.raises(ValueError, match="tensor input"): seg.predict(torch.zeros(2, 2, 3, 4, 4))
