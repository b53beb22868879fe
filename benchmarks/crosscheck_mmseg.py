#!/usr/bin/env python3
"""Cross-check segnb's losses and IoUMetric against MMSegmentation 1.2.2 on random tensors (numbers printed side by side).

Run with the peers interpreter (see /work/shared/bench/README.md), from anywhere:
    ~/peers/litevenv/bin/python benchmarks/crosscheck_mmseg.py
segnb is imported from this checkout and its other dependencies (fastai, ...) from the checkout's .venv (appended to
sys.path, so torch/numpy stay the peers venv's). Expected differences, by design (see nbs/30_losses, nbs/31_metrics):
DiceLoss (segnb: per class, ignored pixels masked) is not compared; MMSeg's CPU FocalLoss is broken and not compared;
MMSeg crashes on class weights when labels hold 255, so class weights are compared on a batch without ignored pixels;
mFscore differs for classes that are in GT but never predicted, or predicted but absent from GT (MMSeg: NaN, segnb: 0).
"""
import glob, sys, types
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path += glob.glob(str(ROOT / ".venv/lib/python3*/site-packages"))
from segnb.benchmark import stub_mmcv_ext  # noqa: E402  (torch + stdlib only: importable under the peers' python too)
stub_mmcv_ext()   # mmcv-lite: mmseg imports mmcv.ops at import time; no op is called here
import warnings; warnings.filterwarnings('ignore')
import torch, numpy as np
from mmseg.models.losses import CrossEntropyLoss as MCE, LovaszLoss as MLov, OhemCrossEntropy as MOhem, BoundaryLoss as MBd
from mmseg.models.losses.tversky_loss import TverskyLoss as MTv
from mmseg.evaluation.metrics import IoUMetric as MIoU
import segnb.losses as S
from segnb.metrics import IoUMetric
torch.manual_seed(0)
x = torch.randn(2, 5, 16, 16); t = torch.randint(0, 5, (2, 16, 16)); t[:, :3] = 255
def cmp(name, a, b): print(f"{name:55s} segnb={float(a):.8f} mmseg={float(b):.8f} diff={abs(float(a)-float(b)):.2e}")
cmp("CE softmax avg_non_ignore=False", S.CrossEntropyLoss()(x, t), MCE()(x, t, ignore_index=255))
cmp("CE softmax avg_non_ignore=True", S.CrossEntropyLoss(avg_non_ignore=True)(x, t), MCE(avg_non_ignore=True)(x, t, ignore_index=255))
tt = t.clone(); tt[tt == 255] = 0
cmp("CE softmax class_weight, no ignored pixels", S.CrossEntropyLoss(class_weight=[1,2,3,4,5])(x, tt), MCE(class_weight=[1,2,3,4,5])(x, tt, ignore_index=255))
cmp("CE sigmoid 5ch avg_non_ignore=False", S.CrossEntropyLoss(use_sigmoid=True)(x, t), MCE(use_sigmoid=True)(x, t, ignore_index=255))
cmp("CE sigmoid 5ch avg_non_ignore=True", S.CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(x, t), MCE(use_sigmoid=True, avg_non_ignore=True)(x, t, ignore_index=255))
xb = x[:, :1]; tb = (t % 2).masked_fill(t == 255, 255)
cmp("CE sigmoid 1ch", S.CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(xb, tb), MCE(use_sigmoid=True, avg_non_ignore=True)(xb, tb, ignore_index=255))
cmp("Lovasz softmax present", S.LovaszLoss()(x, t), MLov(reduction='none')(x, t, ignore_index=255))
cmp("Lovasz softmax all per_image", S.LovaszLoss(classes='all', per_image=True)(x, t), MLov(classes='all', per_image=True)(x, t, ignore_index=255))
cmp("Lovasz class_weight", S.LovaszLoss(class_weight=[1,2,3,4,5])(x, t), MLov(reduction='none', class_weight=[1,2,3,4,5])(x, t, ignore_index=255))
cmp("Lovasz hinge", S.LovaszLoss(loss_type='binary')(xb, tb), MLov(loss_type="binary", reduction="none")(xb[:, 0].contiguous(), tb, ignore_index=255))
cmp("Tversky", S.TverskyLoss()(x, t), MTv()(x, t))
cmp("Tversky class_weight", S.TverskyLoss(class_weight=[1,2,3,4,5])(x, t), MTv(class_weight=[1,2,3,4,5])(x, t))
for th, mk in [(0.7, 10), (0.3, 100), (0.9, 1000)]:
    cmp(f"OhemCrossEntropy thres={th} min_kept={mk}", S.OhemCrossEntropy(thres=th, min_kept=mk)(x, t), MOhem(thres=th, min_kept=mk)(x, t))
# boundary: no ignored pixels (PIDNet treats ignore as non-edge); mmseg takes the edge map from GenerateEdge(width=4)
import cv2
from mmseg.datasets.transforms import GenerateEdge
tt2 = torch.randint(0, 3, (1, 4, 4)); tt2 = torch.nn.functional.interpolate(tt2[None].float(), size=(32, 32)).long()[0]
edge = GenerateEdge(edge_width=4).transform({'img_shape': (32, 32), 'gt_seg_map': tt2[0].numpy().astype(np.uint8)})['gt_edge_map']
print("mask_to_boundary == GenerateEdge(4):", bool((S.mask_to_boundary(tt2, 4)[0].numpy() == edge).all()))
blog = torch.randn(1, 1, 32, 32)
cmp("BoundaryLoss (no ignore)", S.BoundaryLoss()(blog, tt2), MBd()(blog, torch.from_numpy(edge)[None]))
# IoUMetric vs MMSeg on random data with ignore and absent classes
g = torch.Generator().manual_seed(1)
C = 12
gts = torch.randint(0, C, (6, 40, 40), generator=g); pr = gts.clone(); w = torch.rand(6, 40, 40, generator=g) < 0.4
pr[w] = torch.randint(0, C, (int(w.sum()),), generator=g); gts[gts == 3] = 0; pr[pr == 3] = 0; gts[gts == 7] = 1   # 3 absent; 7 predicted only
gts[torch.rand(6, 40, 40, generator=g) < 0.05] = 255
mm = MIoU(iou_metrics=['mIoU', 'mDice', 'mFscore']); mm.dataset_meta = dict(classes=[str(i) for i in range(C)])
import contextlib, io
for p_, l_ in zip(pr, gts): mm.process({}, [dict(pred_sem_seg=dict(data=p_[None]), gt_sem_seg=dict(data=l_[None]))])
with contextlib.redirect_stdout(io.StringIO()): ref = mm.compute_metrics(mm.results)
ours = IoUMetric(C).update(pr, gts).compute()
for k in ref: print(f"{k:11s} segnb={ours[k]:.4f} mmseg={ref[k]:.2f}")
# OHEMPixelSampler: with thresh, and ranking by the head's own loss
from mmseg.structures.sampler import OHEMPixelSampler as MSampler
class _MHead: ignore_index = 255; loss_decode = MCE(avg_non_ignore=True)
class _SHead: ignore_index = 255; loss_decode = S.build_losses([dict(type="CrossEntropyLoss", avg_non_ignore=True)])
for kw in [dict(thresh=0.7, min_kept=20), dict(thresh=None, min_kept=40)]:
    a = S.OHEMPixelSampler(_SHead(), **kw).sample(x, t[:, None]); b = MSampler(_MHead(), **kw).sample(x, t[:, None])
    print(f"OHEMPixelSampler {kw}: identical weights: {bool(torch.equal(a, b))} ({int(a.sum())} pixels kept)")
# DepthMetric (per image, NYU crop) on 480x640 maps
from mmseg.evaluation.metrics import DepthMetric as MDepth
from segnb.metrics import DepthMetric
g = torch.Generator().manual_seed(2)
gt = torch.rand(3, 1, 480, 640, generator=g) * 9 + 0.2; gt[0, 0, :50] = 0
pred = (gt + 0.3 * torch.randn(3, 1, 480, 640, generator=g)).abs() + 0.05
md = MDepth(min_depth_eval=1e-3, max_depth_eval=10, crop_type="nyu_crop")
for p_, g_ in zip(pred, gt): md.process({}, [dict(pred_depth_map=dict(data=p_), gt_depth_map=dict(data=g_))])
with contextlib.redirect_stdout(io.StringIO()): ref = md.compute_metrics(md.results)
ours = DepthMetric(min_depth_eval=1e-3, max_depth_eval=10, crop_type="nyu_crop").update(pred, gt).compute()
for k in ref: print(f"{k:11s} segnb={ours[k]:.8f} mmseg={ref[k]:.8f} diff={abs(ours[k] - ref[k]):.1e}")
