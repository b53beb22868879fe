"IoUMetric / DepthMetric against independent NumPy computations, fastai use, and a 2-process gloo all-reduce."
import math, os, socket, tempfile, time, json
from datetime import timedelta
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segnb.metrics import IoUMetric, DepthMetric, MetricView, crop_mask
from segnb.registry import METRICS

IGN = 255

# ---------------------------------------------------------------- independent references
def np_iou_reference(preds, gts, C, ignore=IGN, reduce_zero_label=False, beta=1.0, nan_to_num=None):
    "Per-class set counting with NumPy (one boolean mask per class), MMSeg's formulas, n/a = 0/0, nanmean."
    p = np.concatenate([np.asarray(x).ravel() for x in preds]).astype(np.int64)
    g = np.concatenate([np.asarray(x).ravel() for x in gts]).astype(np.int64)
    if reduce_zero_label:
        g = g.copy(); ign = g == ignore; g = g - 1; g[(g == -1) | ign] = ignore
    valid = (g != ignore) & (g >= 0) & (g < C)
    p, g = p[valid], g[valid]
    rows = {k: [] for k in ["IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"]}
    div = lambda a, b: a / b if b > 0 else float("nan")
    for c in range(C):
        G, P = g == c, p == c
        tp = float(np.sum(G & P)); fp = float(np.sum(~G & P)); fn = float(np.sum(G & ~P))
        rows["IoU"].append(div(tp, tp + fp + fn)); rows["Acc"].append(div(tp, tp + fn)); rows["Recall"].append(div(tp, tp + fn))
        rows["Dice"].append(div(2 * tp, 2 * tp + fp + fn)); rows["Precision"].append(div(tp, tp + fp))
        rows["Fscore"].append(div((1 + beta ** 2) * tp, (1 + beta ** 2) * tp + beta ** 2 * fn + fp))
    rows = {k: np.array(v) for k, v in rows.items()}
    if nan_to_num is not None: rows = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in rows.items()}
    m = lambda v: 100 * float(np.nanmean(v)) if np.any(~np.isnan(v)) else float("nan")
    out = {"aAcc": 100 * float(np.mean(p == g)) if len(g) else float("nan"), "mIoU": m(rows["IoU"]), "mAcc": m(rows["Acc"]),
           "mDice": m(rows["Dice"]), "mFscore": m(rows["Fscore"]), "mPrecision": m(rows["Precision"]), "mRecall": m(rows["Recall"])}
    return out, rows

def random_pairs(n, C, H=17, W=23, seed=0, absent=(), p_ignore=0.05, label_max=None):
    g = torch.Generator().manual_seed(seed)
    gts = torch.randint(0, label_max or C, (n, H, W), generator=g)
    preds = gts.clone(); wrong = torch.rand(n, H, W, generator=g) < 0.4
    preds[wrong] = torch.randint(0, C, (int(wrong.sum()),), generator=g)
    for a in absent: gts[gts == a] = 0; preds[preds == a] = 1
    gts[torch.rand(n, H, W, generator=g) < p_ignore] = IGN
    return preds, gts

def assert_dict_close(a, b, tol=1e-6):
    assert set(a) == set(b), (set(a), set(b))
    for k in a:
        if math.isnan(b[k]): assert math.isnan(a[k]), k
        else: assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])

# ---------------------------------------------------------------- IoUMetric
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_iou_matches_numpy_with_absent_classes(beta):
    C = 7
    preds, gts = random_pairs(5, C, absent=(3, 5), seed=1)
    preds[0, 0, 0], gts[0, 0, 0] = 5, 0                  # class 5: predicted once, never in GT
    m = IoUMetric(C, iou_metrics=["mIoU", "mDice", "mFscore"], beta=beta)
    for p, g in zip(preds.split(2), gts.split(2)): m.update(p, g)
    ref, rows = np_iou_reference(preds, gts, C, beta=beta)
    assert_dict_close(m.compute(), ref)
    pc = m.per_class()
    assert math.isnan(pc["IoU"][3]) and pc["IoU"][5] == 0.0 and math.isnan(pc["Acc"][5])
    for k, v in rows.items(): np.testing.assert_allclose(pc[k], 100 * v, atol=1e-6)
    table = m.summary_table()
    assert "n/a" in table and "Precision" in table and table.count("\n") > C

@pytest.mark.parametrize("C", [150, 200])   # int16 and int32 bin indices
def test_iou_many_classes_random_large(C):
    preds, gts = random_pairs(4, C, H=64, W=48, seed=2, absent=(7, 8, 9))
    m = IoUMetric(C)
    m.update(preds, gts)
    assert_dict_close(m.compute(), np_iou_reference(preds, gts, C)[0])
    # sklearn's confusion matrix, where available, agrees with ours
    skm = pytest.importorskip("sklearn.metrics")
    k = gts.reshape(-1) != IGN
    cm = skm.confusion_matrix(gts.reshape(-1)[k].numpy(), preds.reshape(-1)[k].numpy(), labels=list(range(C)))
    np.testing.assert_array_equal(m.confusion_matrix().numpy(), cm)

def test_iou_reduce_zero_label_and_nan_to_num():
    C = 5
    preds, gts = random_pairs(3, C + 1, seed=3)            # labels 0..5; 0 = "other", preds in reduced space 0..4 (+5 = invalid)
    preds = preds.clamp(max=C - 1)
    m = IoUMetric(C, reduce_zero_label=True, nan_to_num=0)
    m.update(preds, gts)
    assert_dict_close(m.compute(), np_iou_reference(preds, gts, C, reduce_zero_label=True, nan_to_num=0)[0])

@pytest.mark.parametrize("ignore", [0, -1, 2])
def test_iou_ignore_index_variants(ignore):
    C = 4
    g = torch.Generator().manual_seed(4)
    gts = torch.randint(0, C, (2, 9, 9), generator=g); preds = torch.randint(0, C, (2, 9, 9), generator=g)
    gts[:, 0] = ignore
    m = IoUMetric(C, ignore_index=ignore).update(preds, gts)
    assert_dict_close(m.compute(), np_iou_reference(preds, gts, C, ignore=ignore)[0])

def test_iou_out_of_range_labels_dropped_and_inputs_untouched():
    C = 3
    gts = torch.tensor([[[0, 1, 2, 7], [1, 1, IGN, 0]]], dtype=torch.int32)
    preds = torch.tensor([[[0, 9, 2, 1], [1, -3, 1, 0]]], dtype=torch.int32)
    g0, p0 = gts.clone(), preds.clone()
    m = IoUMetric(C).update(preds, gts)
    assert torch.equal(gts, g0) and torch.equal(preds, p0)
    # GT 7 is not a class: skipped like ignore; predictions 9 / -3 on valid pixels count as misses for their GT class
    assert m.confusion_matrix().tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert_dict_close({k: v for k, v in m.compute().items() if k in ("mAcc",)}, {"mAcc": 100 * (1 + 1 / 3 + 1) / 3})

def test_iou_logits_binary_and_uint8():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 5, 6, 6, generator=g); gts = torch.randint(0, 5, (2, 12, 12), generator=g).to(torch.uint8)
    up = F.interpolate(logits, size=(12, 12), mode="bilinear", align_corners=False).argmax(1)
    a = IoUMetric(5).update(logits, gts); b = IoUMetric(5).update(up, gts.long())
    assert torch.equal(a.confusion_matrix(), b.confusion_matrix())
    one = torch.randn(2, 1, 12, 12, generator=g); gb = torch.randint(0, 2, (2, 12, 12), generator=g)
    c = IoUMetric(2, threshold=0.7).update(one, gb)
    d = IoUMetric(2).update((one[:, 0].sigmoid() > 0.7).long(), gb)
    assert torch.equal(c.confusion_matrix(), d.confusion_matrix())
    single = IoUMetric(5).update(up[0], gts[0])            # (H, W) works
    assert single.confusion_matrix().sum() == 144

def test_iou_errors_and_registry():
    with pytest.raises(ValueError, match="channels"): IoUMetric(3).update(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in shape"): IoUMetric(3).update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="class_names"): IoUMetric(3, ["a", "b"])
    m = METRICS.build({"type": "IoUMetric", "num_classes": 3, "iou_metrics": ["mIoU"]})
    assert m.keys == ["aAcc", "mIoU", "mAcc"] and m.name == "mIoU"
    assert isinstance(METRICS.build({"type": "DepthMetric"}), DepthMetric)

def test_iou_fastai_views_share_one_matrix():
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from torch.utils.data import TensorDataset, DataLoader
    torch.manual_seed(0)
    xs, ys = torch.randn(12, 3, 8, 8), torch.randint(0, 3, (12, 8, 8)); ys[:, 0] = IGN
    dls = DataLoaders(DataLoader(TensorDataset(xs, ys), batch_size=5), DataLoader(TensorDataset(xs, ys), batch_size=5))
    net = torch.nn.Conv2d(3, 3, 1)
    iou = IoUMetric(3)
    views = iou.fastai_metrics(["mIoU", "aAcc", "mPrecision"])
    assert all(isinstance(v, MetricView) for v in views) and [v.name for v in views] == ["mIoU", "aAcc", "mPrecision"]
    learn = Learner(dls, net, loss_func=lambda p, y: F.cross_entropy(p, y, ignore_index=IGN), metrics=views)
    with learn.no_logging(): res = learn.validate()
    with torch.no_grad(): ref = IoUMetric(3).update(net(xs), ys).compute()
    assert abs(res[1] - ref["mIoU"]) < 1e-9 and abs(res[2] - ref["aAcc"]) < 1e-9 and abs(res[3] - ref["mPrecision"]) < 1e-9
    assert int(iou.confusion_matrix().sum()) == int((ys != IGN).sum())   # each batch counted once
    with pytest.raises(KeyError, match="unknown key"): iou.fastai_metrics(["rmse"])

# ---------------------------------------------------------------- DepthMetric
def np_depth_reference(gts, preds, lo, hi, crop=None, pooling="image"):
    rows, pooled = [], [[], []]
    for gi, pi in zip(gts, preds):
        gi, pi = np.asarray(gi, np.float64).reshape(gi.shape[-2:]), np.asarray(pi, np.float64).reshape(gi.shape[-2:])
        with np.errstate(invalid="ignore"): m = (gi > lo) & (gi < hi)
        if crop is not None: c = np.zeros_like(m); c[crop[0]:crop[1], crop[2]:crop[3]] = True; m &= c
        if not m.any(): continue
        pooled[0].append(gi[m]); pooled[1].append(pi[m])
        rows.append(_np_metrics(gi[m], pi[m]))
    keys = ["d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"]
    if pooling == "pixel": return dict(zip(keys, _np_metrics(np.concatenate(pooled[0]), np.concatenate(pooled[1]))))
    return dict(zip(keys, np.mean(rows, 0)))

def _np_metrics(g, p):
    th = np.maximum(g / p, p / g); dl = np.log(p) - np.log(g)
    return [np.mean(th < 1.25), np.mean(th < 1.25 ** 2), np.mean(th < 1.25 ** 3), np.mean(np.abs(p - g) / g), np.mean((p - g) ** 2 / g),
            np.sqrt(np.mean((p - g) ** 2)), np.sqrt(np.mean(dl ** 2)), np.mean(np.abs(np.log10(p) - np.log10(g))),
            np.sqrt(np.mean(dl ** 2) - 0.5 * np.mean(dl) ** 2)]

def depth_data(n=4, H=24, W=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 1, H, W, generator=g) * 12
    gt[0, 0, :3] = 0; gt[1 % n, 0, 5, :] = float("nan"); gt[2 % n, 0, :, 7] = float("inf")
    if n > 3: gt[3] = 0                                   # image 3: nothing valid
    pred = (gt.nan_to_num(2., 2., 2.) + torch.randn(n, 1, H, W, generator=g)).abs() + 0.05
    return gt, pred

@pytest.mark.parametrize("pooling", ["image", "pixel"])
def test_depth_matches_numpy(pooling):
    gt, pred = depth_data()
    m = DepthMetric(min_depth_eval=0.5, max_depth_eval=10, pooling=pooling)
    for a, b in zip(pred.split(3), gt.split(3)): m.update(a, b)
    assert_dict_close(m.compute(), np_depth_reference(gt, pred, 0.5, 10, pooling=pooling))
    assert m.n_images == 3 and m.n_empty == 1

def test_depth_crops_and_resize():
    gt, pred = depth_data(n=2, H=48, W=64, seed=1)
    m = DepthMetric(crop_type="nyu_crop").update(pred, gt)
    crop = (round(45 / 480 * 48), round(471 / 480 * 48), round(41 / 640 * 64), round(601 / 640 * 64))
    assert_dict_close(m.compute(), np_depth_reference(gt, pred, 0.0, np.inf, crop=crop))
    full = crop_mask("nyu_crop", 480, 640)
    assert full[45:471, 41:601].all() and int(full.sum()) == 426 * 560
    small = pred[:, :, ::2, ::2]
    up = F.interpolate(small, size=(48, 64), mode="bilinear", align_corners=False)
    assert_dict_close(DepthMetric().update(small, gt).compute(), DepthMetric().update(up, gt).compute(), tol=1e-12)
    with pytest.raises(ValueError, match="crop_type"): DepthMetric(crop_type="eigen")

def test_depth_fastai_and_keys():
    dm = DepthMetric(depth_metrics=["abs_rel", "rmse"])
    assert dm.name == "rmse" and [v.name for v in dm.fastai_metrics()] == ["abs_rel", "rmse"]
    with pytest.raises(KeyError): DepthMetric(depth_metrics=["mae"])
    class L: pass
    learn = L(); gt, pred = depth_data(n=2, seed=2)
    learn.training, learn.epoch, learn.iter, learn.pred, learn.y = False, 0, 0, pred, gt
    v = dm.fastai_metrics(); v[0].accumulate(learn); v[1].accumulate(learn)          # same batch: counted once
    ref = np_depth_reference(gt, pred, 0.0, np.inf)
    assert abs(v[1].value - ref["rmse"]) < 1e-9 and abs(v[0].value - ref["abs_rel"]) < 1e-9

# ---------------------------------------------------------------- distributed: 2 processes on gloo
def _free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _dist_worker(rank, world, port, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        preds, gts = random_pairs(6, 9, seed=7, absent=(4,))
        dgt, dpred = depth_data(n=6, seed=8)
        iou, dm = IoUMetric(9), DepthMetric(max_depth_eval=10)
        for i in range(rank, 6, world):                   # each rank sees half of the set
            iou.update(preds[i:i + 1], gts[i:i + 1]); dm.update(dpred[i:i + 1], dgt[i:i + 1])
        r = {"iou": iou.compute(), "iou_again": iou.compute(), "depth": dm.compute(), "local": iou.compute(sync=False),
             "n": int(iou.confusion_matrix().sum())}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f: json.dump(r, f)
    finally:
        dist.destroy_process_group()

def test_distributed_sync_gloo():
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as d:
        ctx = mp.start_processes(_dist_worker, args=(2, _free_port(), d), nprocs=2, join=False, start_method="spawn")
        deadline = time.time() + 120
        try:
            while not ctx.join(timeout=5):
                if time.time() > deadline: pytest.fail("distributed workers did not finish within 120 s")
        finally:
            for p in ctx.processes:
                if p.is_alive(): p.terminate()
        res = [json.load(open(os.path.join(d, f"rank{r}.json"))) for r in range(2)]
    preds, gts = random_pairs(6, 9, seed=7, absent=(4,))
    dgt, dpred = depth_data(n=6, seed=8)
    single = IoUMetric(9).update(preds, gts)
    for r in res:
        assert_dict_close(r["iou"], single.compute(), tol=1e-9)
        assert_dict_close(r["iou_again"], single.compute(), tol=1e-9)          # sync is idempotent
        assert_dict_close(r["depth"], DepthMetric(max_depth_eval=10).update(dpred, dgt).compute(), tol=1e-9)
        assert r["n"] == int((gts != IGN).sum())
    assert res[0]["local"] != res[1]["local"]                                  # each rank alone saw different data

def test_fastai_tensor_types_and_numpy():
    from fastai.torch_core import TensorImage, TensorMask
    preds, gts = random_pairs(2, 4, seed=9)
    a = IoUMetric(4).update(TensorImage(torch.randn(2, 4, 17, 23)), TensorMask(gts))
    b = IoUMetric(4).update(preds.numpy(), gts.numpy())
    assert_dict_close(b.compute(), np_iou_reference(preds, gts, 4)[0])
    assert int(a.confusion_matrix().sum()) == int((gts != IGN).sum())
    with pytest.raises(TypeError, match="tensors or arrays"): IoUMetric(4).update([1, 2], gts)
