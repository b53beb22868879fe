#!/usr/bin/env python3
"""`Segmenter.predict(folder)` vs a per-image Python loop over the same model, on a folder of N synthetic images.

Both paths use the SAME optimised model (conv-BN fused, channels-last, `inference_mode`) and the same preprocessing; the loop
reads, prepares and predicts one image at a time (batch 1, decoding on the main thread), `Segmenter.predict` batches
(`--batch-size`) while `--workers` threads decode ahead. Rounds alternate loop / predict (background load hits both alike);
the median per path is reported, with the speed-up and a check that both give the same label maps.

Usage:  .venv/bin/python benchmarks/bench_predict.py [--n 100] [--size 256] [--algo fcn --backbone test_resnet.r160_in1k]
                                                     [--batch-size 16] [--workers 2] [--rounds 3] [--threads 2] [--quick]
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def make_folder(root: Path, n: int, size: int) -> Path:
    from segnb.data.synthetic import render_scene
    d = root / "imgs"; d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(render_scene(np.random.default_rng([0, i]), (size, size))[0]).save(d / f"{i:04d}.jpg", quality=92)
    return d


def per_image_loop(seg, files):
    "The baseline: read, prepare, predict, resize back, one image at a time."
    from segnb.data.core import load_image
    model = seg.runner.model
    out = []
    with torch.inference_mode():
        for f in files:
            a = np.asarray(load_image(f))
            x, (h, w) = seg.pre(a)
            logits = model.inference(x[None].to(seg.runner.device))[:, :, :h, :w]
            logits = F.interpolate(logits, size=a.shape[:2], mode="bilinear", align_corners=False)
            out.append(logits.argmax(1)[0].to(torch.uint8).cpu().numpy())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100); ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--algo", default="fcn"); ap.add_argument("--backbone", default="test_resnet.r160_in1k")
    ap.add_argument("--batch-size", type=int, default=16); ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3); ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    ap.add_argument("--quick", action="store_true", help="20 images of 64x64, 1 round: a smoke run")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if a.quick: a.n, a.size, a.rounds = 20, 64, 1
    if a.threads: torch.set_num_threads(a.threads)
    from segnb.inference import Segmenter, save_run
    from segnb.models.segmentor import EncoderDecoder
    from segnb.data.synthetic import SYNTHETIC_META
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    files_dir = make_folder(tmp, a.n, a.size)
    torch.manual_seed(0)
    model = EncoderDecoder.from_name(a.algo, backbone=a.backbone, num_classes=6, auxiliary_head=False)
    seg = Segmenter(model, meta=SYNTHETIC_META, batch_size=a.batch_size, num_workers=a.workers)
    files = sorted(files_dir.iterdir())
    per_image_loop(seg, files[:2]); seg.predict(files[:2])        # warm-up (allocator, kernels)
    t_loop, t_pred = [], []
    for r in range(a.rounds):
        t0 = time.perf_counter(); ref = per_image_loop(seg, files); t_loop.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); res = seg.predict(files_dir, progress=False); t_pred.append(time.perf_counter() - t0)
    agree = float(np.mean([(r.labels == q).mean() for r, q in zip(res, ref)]))
    lo, pr = statistics.median(t_loop), statistics.median(t_pred)
    out = dict(n=a.n, size=a.size, model=f"{a.algo}/{a.backbone}", batch_size=a.batch_size, workers=a.workers, rounds=a.rounds,
               torch_threads=torch.get_num_threads(), cpus=os.cpu_count(), load=os.getloadavg()[0],
               loop_s=round(lo, 3), predict_s=round(pr, 3), loop_img_s=round(a.n / lo, 1), predict_img_s=round(a.n / pr, 1),
               speedup=round(lo / pr, 2), label_agreement=agree)
    print(f"{a.n} images {a.size}x{a.size}, {out['model']}, torch threads {out['torch_threads']}, load avg {out['load']:.1f}")
    print(f"  per-image loop      {lo:7.2f} s  {a.n / lo:7.1f} img/s")
    print(f"  Segmenter.predict   {pr:7.2f} s  {a.n / pr:7.1f} img/s   (batch {a.batch_size}, {a.workers} decode threads)")
    print(f"  speed-up {lo / pr:.2f}x, label maps agree {agree:.4%}")
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
