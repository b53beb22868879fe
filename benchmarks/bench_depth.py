#!/usr/bin/env python3
"""Depth and multi-task training on the synthetic scenes, on CPU: does a depth model reach δ1 >= 0.8, and does a
multi-task model (one backbone, a segmentation head and a depth head) keep both metrics within 10 % of the single-task
models trained for the same steps?

Three runs with identical data, backbone, optimiser, schedule and seed (everything random-initialised, nothing
downloaded), each `--iters` iterations of batch `--bs` on `SyntheticScenes(depth=True)` at `--size`²:

* depth:     `depth_learner(dls, "depthconv", backbone)`   DepthConvHead, SiLog + 0.5 x gradient-matching loss
* seg:       `seg_learner(dls, "semfpn", backbone)`        Semantic-FPN head, cross-entropy
* multitask: `multitask_learner(dls, "semfpn", backbone)`  both heads on the same FPN features, losses 1 : 1

Validation: `--n-val` held-out scenes (split 'val'), whole-set metrics: mIoU/aAcc (`IoUMetric`, 6 classes) and MMSeg's
depth metrics (`DepthMetric`, per-image mean, valid range (0, 10 m): the sky, stored at exactly 10 m, is outside it).
Training uses fastai's one-cycle schedule (AdamW, lr `--lr`, pct_start 0.25) with random flips.

Usage:
    .venv/bin/python benchmarks/bench_depth.py                   # 96x96, resnet18, 640 iterations per run, 2 threads
    .venv/bin/python benchmarks/bench_depth.py --quick           # smoke test: 32x32, test_resnet, 6 iterations
    .venv/bin/python benchmarks/bench_depth.py --only depth --json out.json
"""
import argparse, json, os, sys, time, warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def make_dls(kind, size, n_train, n_val, bs, seed):
    from segnb.data.synthetic import SyntheticScenes
    from segnb.data.core import seg_dataloaders
    from segnb.data.depth import depth_dataloaders, DepthMeta
    tr = SyntheticScenes(n_train, size, seed=seed, split="train", depth=True)
    va = SyntheticScenes(n_val, size, seed=seed, split="val", depth=True)
    flip = [dict(type="RandomFlip", prob=0.5)]
    if kind == "depth":
        return depth_dataloaders((tr, va), meta=DepthMeta(max_depth=10.0), bs=bs, val_bs=16, item_tfms=flip, val_item_tfms=[], seed=seed)
    seg = SyntheticScenes(n_train, size, seed=seed, split="train", depth=kind == "multitask")
    segv = SyntheticScenes(n_val, size, seed=seed, split="val", depth=kind == "multitask")
    return seg_dataloaders((seg, segv), seg.meta, bs=bs, val_bs=16, item_tfms=flip, val_item_tfms=[], seed=seed)


def run(kind, a):
    from segnb.depth_learner import depth_learner, multitask_learner
    from segnb.learner import seg_learner
    torch.manual_seed(a.seed)
    dls = make_dls(kind, a.size, a.n_train, a.n_val, a.bs, a.seed)
    from fastai.optimizer import Adam
    if kind == "depth": learn = depth_learner(dls, "depthconv", backbone=a.backbone, channels=a.channels, max_depth=10.0, opt_func=Adam)
    elif kind == "seg":
        learn = seg_learner(dls, "semfpn", backbone=a.backbone, opt_func=Adam)
    else: learn = multitask_learner(dls, "semfpn", backbone=a.backbone, channels=a.channels, max_depth=10.0, opt_func=Adam)
    n_batches = len(dls.train)
    epochs = max(1, round(a.iters / n_batches))
    t0 = time.time()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, a.lr, wd=1e-4, pct_start=0.25)
        train_s = time.time() - t0
        res = learn.validate_metrics()
    res = {k: round(float(v), 4) for k, v in res.items()}
    out = dict(run=kind, iters=epochs * n_batches, epochs=epochs, train_seconds=round(train_s, 1),
               params=sum(p.numel() for p in learn.model.parameters()), **res)
    print(json.dumps(out), flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--channels", type=int, default=64, help="depth head channels")
    p.add_argument("--iters", type=int, default=640)
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=["depth", "seg", "multitask"], default=["depth", "seg", "multitask"])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="smoke test: 32x32 scenes, test_resnet, 6 iterations")
    a = p.parse_args()
    if a.quick: a.size, a.backbone, a.iters, a.n_train, a.n_val, a.bs, a.channels = 32, "test_resnet", 6, 12, 8, 4, 16
    torch.set_num_threads(a.threads)
    print(f"# bench_depth: {a.size}x{a.size}, {a.backbone}, {a.iters} iterations x batch {a.bs}, {a.threads} threads, torch {torch.__version__}", flush=True)
    res = {k: run(k, a) for k in a.only}
    summary = {}
    if "depth" in res:
        summary["depth_d1"] = res["depth"]["d1"]
        summary["depth_d1_ge_0.8"] = res["depth"]["d1"] >= 0.8
    if "multitask" in res:
        mt = res["multitask"]
        if "seg" in res: summary["mIoU_multitask_over_seg"] = round(mt["mIoU"] / res["seg"]["mIoU"], 4)
        if "depth" in res:
            summary["d1_multitask_over_depth"] = round(mt["d1"] / res["depth"]["d1"], 4)
            summary["abs_rel_multitask_over_depth"] = round(mt["abs_rel"] / res["depth"]["abs_rel"], 4)
        # within 10 % of the single-task model, or better: mIoU and d1 >= 0.9 x, abs_rel (lower is better) <= 1.1 x
        ok = [summary[k] >= 0.9 if "abs_rel" not in k else summary[k] <= 1.1
              for k in ("mIoU_multitask_over_seg", "d1_multitask_over_depth", "abs_rel_multitask_over_depth") if k in summary]
        summary["multitask_within_10pct"] = all(ok) if ok else None
    print("# summary " + json.dumps(summary), flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(dict(args=vars(a), runs=res, summary=summary), indent=1))


if __name__ == "__main__":
    main()
