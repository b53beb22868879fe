"Depth: invalid pixels never reach losses or metrics, the Eigen crop, Middlebury disparity→depth, depth models and the multi-task contract."
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segnb.registry import MODELS, HEADS, LOSSES, DATASETS
from segnb.metrics import DepthMetric, IoUMetric
from segnb.data.core import TensorDepth
from segnb.data.depth import (DepthMeta, disparity_to_depth, parse_middlebury_calib, StereoCalib, MOTORCYCLE_CALIB,
                              stereo_motorcycle_depth, read_pfm, write_pfm, depth_dataloaders, MiddleburyDataset)
from segnb.models.depth import (SiLogLoss, GradientMatchingLoss, DepthL1Loss, SegDepthOutput, TaskMetric, multitask_metrics)

LOSS_CLASSES = [SiLogLoss, GradientMatchingLoss, DepthL1Loss]


# ---------------------------------------------------------------- invalid pixels
def _batch(seed=0, shape=(3, 1, 20, 24)):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(shape, generator=g) * 6 + 0.5
    pred = torch.rand(shape, generator=g) * 6 + 0.5
    inv = torch.rand(shape, generator=g) < 0.3
    inv[1] = True                                        # one image with no valid pixel at all
    return pred, gt, inv


@pytest.mark.parametrize("cls", LOSS_CLASSES)
@pytest.mark.parametrize("fill", [0.0, float("nan"), float("inf"), -float("inf"), -3.0])
def test_invalid_pixels_never_affect_loss(cls, fill):
    "Whatever the target and the prediction hold at invalid pixels, the loss and the valid gradients are the same; the invalid gradients are 0."
    pred, gt, inv = _batch()
    ref_p = pred.clone().requires_grad_(True)
    ref = cls()(ref_p, torch.where(inv, torch.zeros_like(gt), gt))
    ref.backward()
    for pfill in (1.0, 1e6, float("nan"), 0.0):
        p = torch.where(inv, torch.full_like(pred, pfill), pred).requires_grad_(True)
        t = torch.where(inv, torch.full_like(gt, fill), gt)
        loss = cls()(p, t)
        loss.backward()
        assert torch.isfinite(loss)
        assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6, abs=1e-7)
        assert bool((p.grad[inv] == 0).all())
        assert torch.allclose(p.grad[~inv], ref_p.grad[~inv], atol=1e-7)


@pytest.mark.parametrize("cls", LOSS_CLASSES)
def test_all_invalid_gives_zero_loss_and_gradient(cls):
    p = torch.rand(2, 1, 8, 8, requires_grad=True)
    for t in (torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), float("nan"))):
        loss = cls()(p, t)
        loss.backward()
        assert float(loss) == 0.0 and float(p.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("fill", [0.0, float("nan"), float("inf")])
def test_invalid_pixels_never_affect_depth_metric(fill):
    "DepthMetric (directly and through TaskMetric) gives identical scores whatever the values at invalid target pixels and the prediction there."
    pred, gt, inv = _batch(1)
    gt0 = torch.where(inv, torch.zeros_like(gt), gt)
    ref = DepthMetric().update(pred, gt0).compute()
    t = torch.where(inv, torch.full_like(gt, fill), gt)
    p = torch.where(inv, torch.full_like(pred, 123.0), pred)
    assert DepthMetric().update(p, t).compute() == ref
    tm = TaskMetric(DepthMetric(), "depth").update(SegDepthOutput(torch.zeros(3, 2, 20, 24), p), (torch.zeros(3, 20, 24).long(), t))
    assert tm.compute() == ref


def test_siloss_matches_mmseg_formula():
    "sqrt(E[d²] − 0.5·E[d]²) per image over valid pixels, averaged over images (MMSeg's silog_loss)."
    pred, gt, inv = _batch(2)
    gt = torch.where(inv, torch.zeros_like(gt), gt)
    vals = []
    for i in range(gt.shape[0]):
        v = gt[i] > 0
        if not v.any(): continue
        d = torch.log(gt[i][v]) - torch.log(pred[i][v])
        vals.append(torch.sqrt((d ** 2).mean() - 0.5 * d.mean() ** 2))
    assert float(SiLogLoss()(pred, gt)) == pytest.approx(float(torch.stack(vals).mean()), rel=1e-5)
    assert float(SiLogLoss(loss_weight=3)(pred, gt)) == pytest.approx(3 * float(torch.stack(vals).mean()), rel=1e-5)


def test_scale_invariance():
    pred, gt, _ = _batch(3)
    assert float(GradientMatchingLoss()(pred * 2.5, gt)) == pytest.approx(float(GradientMatchingLoss()(pred, gt)), rel=1e-4)
    assert float(SiLogLoss(lambd=1.0)(pred * 2.5, gt)) == pytest.approx(float(SiLogLoss(lambd=1.0)(pred, gt)), rel=1e-3)
    assert float(SiLogLoss()(pred * 2.5, gt)) != pytest.approx(float(SiLogLoss()(pred, gt)), rel=1e-2)


# ---------------------------------------------------------------- Eigen crop
def test_eigen_crop_exact_on_480x640():
    m = DepthMeta.nyu().crop_mask(480, 640)
    exp = torch.zeros(480, 640, dtype=torch.bool)
    exp[45:471, 41:601] = True
    assert torch.equal(m, exp)
    # and DepthMetric with the NYU meta only reads those pixels: garbage outside the crop changes nothing
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 1, 480, 640, generator=g) * 8 + 1
    pred = torch.rand(1, 1, 480, 640, generator=g) * 8 + 1
    ref = DepthMeta.nyu().metric().update(pred, gt).compute()
    p2 = pred.clone(); p2[..., ~exp] = 1000.0
    assert DepthMeta.nyu().metric().update(p2, gt).compute() == ref
    p3 = pred.clone(); p3[..., 45, 41] = 1000.0        # the crop's first pixel is inside
    assert DepthMeta.nyu().metric().update(p3, gt).compute() != ref


# ---------------------------------------------------------------- stereo
def test_disparity_to_depth_is_middlebury_formula():
    f, B, doffs = 3979.911, 193.001, 124.343
    d = np.array([[0.5, 10.0, 250.0], [np.inf, np.nan, -4.0]], np.float32)
    z = disparity_to_depth(d, f, B, doffs)
    exp_mm = f * B / (d[0] + doffs)
    np.testing.assert_allclose(z[0], exp_mm / 1000, rtol=1e-6)
    assert (z[1] == 0).all()                                  # unknown disparities -> invalid depth
    np.testing.assert_allclose(disparity_to_depth(d, f, B, doffs, baseline_unit=1.0)[0], exp_mm, rtol=1e-6)  # mm out


def test_calib_parse_and_scaling():
    txt = ("cam0=[3979.911 0 1244.772; 0 3979.911 1019.507; 0 0 1]\ncam1=[3979.911 0 1369.115; 0 3979.911 1019.507; 0 0 1]\n"
           "doffs=124.343\nbaseline=193.001\nwidth=2964\nheight=1988\nndisp=270\nisint=0\nvmin=23\nvmax=245\n")
    c = parse_middlebury_calib(txt)
    assert (c.focal, c.doffs, c.baseline, c.cx, c.cy, c.width, c.ndisp) == (3979.911, 124.343, 193.001, 1244.772, 1019.507, 2964, 270)
    q = c.scaled(4)
    # scikit-image's stated calibration for its 4x downsampled Motorcycle is exactly Middlebury's ÷ 4
    assert q.focal == pytest.approx(MOTORCYCLE_CALIB.focal, abs=1e-3) and q.doffs == pytest.approx(MOTORCYCLE_CALIB.doffs, abs=1e-3)
    assert q.cx == pytest.approx(MOTORCYCLE_CALIB.cx, abs=1e-3) and q.cy == pytest.approx(MOTORCYCLE_CALIB.cy, abs=1e-3)
    # the same point: full-resolution disparity 4d with the full calibration = disparity d with the scaled one
    assert float(c.depth(np.array([160.0]))[0]) == pytest.approx(float(q.depth(np.array([40.0]))[0]), rel=1e-6)


def test_stereo_motorcycle_metric_depth():
    img, depth, calib = stereo_motorcycle_depth()
    assert img.shape == (500, 741, 3) and depth.shape == (500, 741)
    v = depth > 0
    assert 0.9 < v.mean() < 0.95
    assert float(depth[v].min()) == pytest.approx(2.11, abs=0.01) and float(depth[v].max()) == pytest.approx(5.02, abs=0.01)
    assert float(np.median(depth[v])) == pytest.approx(2.75, abs=0.01)


def test_disparity_units_on_the_motorcycle_images():
    "The bundled disparity is in downsampled pixels: shifting the right image by d reproduces the left one far better than by 4d or d/4."
    from skimage.data import stereo_motorcycle
    left, right, disp = stereo_motorcycle()
    L, R = left.astype(np.float32).mean(-1), right.astype(np.float32).mean(-1)
    ok = np.isfinite(disp)
    ys, xs = np.nonzero(ok)
    def err(k):
        xr = np.round(xs - k * disp[ys, xs]).astype(int)
        inside = (xr >= 0) & (xr < L.shape[1])
        return float(np.abs(L[ys[inside], xs[inside]] - R[ys[inside], xr[inside]]).mean())
    e1, e4, eq = err(1.0), err(4.0), err(0.25)
    assert e1 < 0.5 * e4 and e1 < 0.5 * eq


def test_middlebury_dataset(tmp_path):
    sc = tmp_path / "Scene-perfect"; sc.mkdir()
    Image.fromarray(np.full((8, 12, 3), 50, np.uint8)).save(sc / "im0.png")
    disp = np.full((8, 12), 20.0, np.float32); disp[1, 1] = np.inf
    write_pfm(sc / "disp0.pfm", disp)
    np.testing.assert_array_equal(read_pfm(sc / "disp0.pfm"), disp)
    (sc / "calib.txt").write_text("cam0=[500 0 6; 0 500 4; 0 0 1]\ncam1=[500 0 11; 0 500 4; 0 0 1]\ndoffs=5\nbaseline=100\n")
    ds = DATASETS.build(dict(type="MiddleburyDataset", data_root=str(tmp_path)))
    img, z = ds[0]
    assert float(z[0, 0]) == pytest.approx(500 * 100 / 25 / 1000) and float(z[1, 1]) == 0.0


# ---------------------------------------------------------------- models
_C = [32, 48, 192, 96]
_BB = dict(type="TimmBackbone", model_name="test_resnet", out_indices=(1, 2, 3, 4))


@pytest.mark.parametrize("head", [
    dict(type="DepthConvHead", in_channels=_C, channels=16),
    dict(type="AdaBinsHead", in_channels=_C, channels=16, n_bins=8),
])
def test_depth_estimator_contract(head):
    m = MODELS.build(dict(type="DepthEstimator", backbone=_BB, decode_head={**head, "max_depth": 8.0, "min_depth": 0.5}))
    x = torch.randn(2, 3, 32, 48)
    m.train()
    out = m(x)
    assert out.shape == (2, 1, 8, 12)
    gt = torch.rand(2, 1, 32, 48) * 6 + 1
    gt[:, :, :5] = 0
    loss = m.loss(out, TensorDepth(gt))
    loss.backward()
    assert torch.isfinite(loss) and "decode.loss_silog" in m.last_losses
    m.eval()
    with torch.no_grad():
        d = m(x)
    assert d.shape == (2, 1, 32, 48) and float(d.min()) >= 0.5 and float(d.max()) <= 8.0
    m.test_cfg = dict(mode="slide_flip", crop_size=(24, 24), stride=(16, 16))
    with torch.no_grad():
        assert m(x).shape == (2, 1, 32, 48)


def test_multitask_loss_and_outputs():
    m = MODELS.build(dict(type="MultiTaskSegmentor", backbone=_BB,
                          decode_head=dict(type="FCNHead", in_channels=96, in_index=3, channels=16, num_convs=1, num_classes=3),
                          depth_head=dict(type="DepthConvHead", in_channels=_C, channels=16),
                          auxiliary_head=dict(type="FCNHead", in_channels=192, in_index=2, channels=8, num_convs=1, num_classes=3,
                                              loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4)),
                          seg_weight=2.0, depth_weight=0.5))
    x = torch.randn(2, 3, 32, 32)
    mask = torch.randint(0, 3, (2, 32, 32)); depth = torch.rand(2, 1, 32, 32) * 5 + 1
    m.train()
    out = m(x)
    assert isinstance(out, SegDepthOutput) and len(out.aux) == 1
    total = m.loss(out, mask, depth)
    ll = m.last_losses
    assert float(total) == pytest.approx(2.0 * (ll["decode.loss_ce"] + ll["aux0.loss_ce"]) + 0.5 * ll["depth.loss_silog"], rel=1e-4)
    total.backward()
    m.eval()
    with torch.no_grad():
        ev = m(x)
    assert ev.seg.shape == (2, 3, 32, 32) and ev.depth.shape == (2, 1, 32, 32)
    views = multitask_metrics(num_classes=3, depth_meta=DepthMeta(max_depth=10))
    class L: training, epoch, iter = False, 0, 0
    L.pred, L.y = ev, (mask, depth)
    for v in views: v.reset()
    for v in views: v.accumulate(L)
    got = {v.name: v.value for v in views}
    assert got["mIoU"] == pytest.approx(IoUMetric(num_classes=3).update(ev.seg, mask).compute()["mIoU"])
    assert got["rmse"] == pytest.approx(DepthMetric(max_depth_eval=10).update(ev.depth, depth).compute()["rmse"])


def test_depth_dataloaders_from_synthetic():
    from segnb.data.synthetic import SyntheticScenes
    dls = depth_dataloaders((SyntheticScenes(4, 32, split="train", depth=True), SyntheticScenes(2, 32, split="val", depth=True)),
                            meta=DepthMeta(max_depth=10), bs=2)
    x, y = dls.one_batch()
    assert isinstance(y, TensorDepth) and y.shape == (2, 1, 32, 32) and float(y.max()) <= 10.0


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["depthconv_r18_synthetic-96x96.yaml", "multitask_fpn-depthconv_r18_synthetic-96x96.yaml"])
def test_configs_build_and_train(name, tmp_path):
    "The shipped configs (with a tiny backbone and 2 iterations) train through learner_from_config and report their metrics."
    from segnb.config import Config
    from segnb.train import learner_from_config, fit_from_config, evaluate
    from segnb.data.core import build_dataloaders
    from segnb.depth_learner import _one_input
    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "segnb" / "configs"
    full = Config.fromfile(root / name)
    assert full.model.backbone.model_name == "resnet18" and full.data.dataset.type == "SyntheticScenes"
    m = MODELS.build(full.model)
    assert sum(p.numel() for p in m.backbone.parameters()) > 11e6
    cfg = Config.fromfile(root / name, ["data.train.n=8", "data.val.n=4", "data.dataset.size=32", "schedule.max_iters=2",
                                        "schedule.val_interval=2", "schedule.warmup_iters=0", "data.batch_size=4",
                                        "model.backbone.model_name=test_resnet", "callbacks.0.interval=2"])
    if cfg.model.type == "DepthEstimator": cfg.model.decode_head.in_channels = [32, 48, 192, 96]
    else: cfg.model.neck.in_channels = [32, 48, 192, 96]
    dls = _one_input(build_dataloaders(cfg.data))     # (image, mask, depth) items: one input, two targets
    learn = learner_from_config(cfg, work_dir=tmp_path, dls=dls)
    with learn.no_bar(), learn.no_logging(): fit_from_config(learn)
    res = evaluate(learn)["metrics"]
    assert {"d1", "abs_rel", "rmse"} <= set(res) and all(math.isfinite(v) for v in res.values())
    if cfg.model.type == "MultiTaskSegmentor": assert "mIoU" in res
    assert (tmp_path / "checkpoints").is_dir()


@pytest.mark.parametrize("name", ["depthconv_r18_synthetic-96x96.yaml", "multitask_fpn-depthconv_r18_synthetic-96x96.yaml"])
def test_cli_train_test_predict_depth_configs(name, tmp_path):
    "`segnb train` / `segnb test` / `segnb predict` on the shipped depth configs: test reproduces the run's metrics; 16-bit depth PNGs."
    import json
    import numpy as np
    from PIL import Image
    from segnb.cli import main
    from segnb.data.synthetic import SyntheticScenes
    cfg = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "segnb" / "configs" / name)
    in_ch = "[32,48,192,96]"
    opts = ["data.train.n=8", "data.val.n=4", "data.dataset.size=32", "data.batch_size=4", "model.backbone.model_name=test_resnet",
            "model.decode_head.in_channels=" + in_ch if "multitask" not in name else "model.neck.in_channels=" + in_ch]
    run = tmp_path / "run"
    assert main(["train", cfg, "--work-dir", str(run), "--cfg-options", *opts, "schedule.max_iters=2", "schedule.val_interval=2",
                 "schedule.warmup_iters=0", "callbacks.0.interval=2"]) == 0
    trained = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {"d1", "abs_rel", "rmse"} <= set(trained) and ("mIoU" in trained) == ("multitask" in name)
    assert main(["test", cfg, str(run), "--out", str(tmp_path / "test.json"), "--show-dir", str(tmp_path / "show"), "--cfg-options", *opts]) == 0
    tested = json.loads((tmp_path / "test.json").read_text())["metrics"]
    for k in ("d1", "abs_rel", "rmse") + (("mIoU",) if "multitask" in name else ()): assert tested[k] == pytest.approx(trained[k], abs=1e-6)
    panels = sorted((tmp_path / "show").glob("*.png"))
    assert len(panels) == 4 and Image.open(panels[0]).size == (32 * (5 if "multitask" in name else 3), 32)
    Image.fromarray(SyntheticScenes(1, 32, 3, "val").render(0)[0]).save(tmp_path / "a.png")
    assert main(["predict", str(run), str(tmp_path / "a.png"), "--out", str(tmp_path / "pred")]) == 0
    d = np.asarray(Image.open(tmp_path / "pred" / "a_depth.png"))
    assert d.dtype == np.uint16 and d.shape == (32, 32) and d.max() > 0


def test_cli_depth_config_without_depth_data_says_so(tmp_path, capsys):
    "A depth model on data without depth maps stops before training with one line naming the config, the items and the fix."
    from segnb.cli import main
    cfg = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "segnb" / "configs" / "depthconv_r18_synthetic-96x96.yaml")
    rc = main(["train", cfg, "--work-dir", str(tmp_path / "run"), "--cfg-options", "data.dataset.depth=false", "data.train.n=4",
               "data.val.n=4", "data.dataset.size=32"])
    err = capsys.readouterr().err
    assert rc == 2 and "depthconv_r18_synthetic-96x96.yaml: model DepthEstimator trains on depth maps" in err
    assert "(ArrayImage, ArrayMask)" in err and "data.dataset.depth=true" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_seg_model_on_items_with_depth_says_so(tmp_path):
    "A segmentation model on (image, mask, depth) items: a ConfigError naming the items and the two ways out."
    from segnb.config import Config, ConfigError
    from segnb.train import learner_from_config
    cfg = Config.fromdict(dict(
        data=dict(dataset=dict(type="SyntheticScenes", size=32, depth=True), train=dict(n=4, split="train"), val=dict(n=4, split="val"),
                  batch_size=2, num_workers=0),
        model=dict(type="EncoderDecoder", backbone=dict(type="TimmBackbone", model_name="test_resnet.r160_in1k", out_indices=[1, 2, 3, 4]),
                   decode_head=dict(type="FCNHead", in_channels=96, in_index=3, channels=8, num_classes=6, num_convs=1)),
        optimizer=dict(type="AdamW", lr=1e-3), schedule=dict(max_iters=2, val_interval=2)))
    with pytest.raises(ConfigError, match=r"takes \(image, mask\) items, but the data items are \(ArrayImage, ArrayMask, ArrayDepth\)"):
        learner_from_config(cfg, work_dir=tmp_path)
