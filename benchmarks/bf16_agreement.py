#!/usr/bin/env python3
"""Label agreement of segnb's fast inference modes with plain fp32, on a trained model.

The model is a training run folder (default `runs/demo`, written by `make demo`: DeepLabV3+ on a ResNet-18 at output
stride 16, trained on the synthetic scenes); the images are the run's validation images, prepared by the run's
validation pipeline. Rows, each against "fp32 direct" (`optimize_for_inference(winograd=False)`: BN fusion only):

  fp32 Winograd       `optimize_for_inference()` on CPU (Winograd F(4x4, 3x3) for the convs with >= 256 channels)
  bf16 autocast       the same model, `inference(x, precision="bf16")`
  bf16 weights        `optimize_for_inference(dtype=torch.bfloat16)`

It prints the share of pixels with the same label, the share of images with 100% agreement, the mIoU of every row
against the ground truth, and the largest logit difference.

Usage:
    .venv/bin/python benchmarks/bf16_agreement.py [--run runs/demo] [--out benchmarks/results/bf16_agreement.md]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the table here (markdown)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from segnb.config import Config
    from segnb.inference import Preprocessor, build_model, load_model_weights, find_run_checkpoint
    from segnb.metrics import IoUMetric
    from segnb.models.winograd import WinogradConv2d

    run = Path(a.run)
    if not (run / "config.yaml").is_file():
        sys.exit(f"{run}: no config.yaml; train the demo first (`make demo`) or pass --run RUN_DIR")
    cfg = Config.fromfile(run / "config.yaml")
    ck = find_run_checkpoint(run, "best")
    pre = Preprocessor.from_config(cfg)
    img_dir = run / "data" / "img_dir" / "val"
    files = sorted(img_dir.glob("*.png"))
    if not files: sys.exit(f"{img_dir}: no validation images")
    xs, gts = [], []
    for f in files:
        x, _ = pre(np.asarray(Image.open(f).convert("RGB")))
        xs.append(x)
        gts.append(torch.from_numpy(np.asarray(Image.open(run / "data" / "ann_dir" / "val" / f.name)).astype(np.int64)))

    def model(**kw):
        m = load_model_weights(build_model(cfg), ck).eval()
        return m.optimize_for_inference(**kw)

    direct, wino, half = model(winograd=False), model(), model(dtype=torch.bfloat16)
    n_wino = sum(isinstance(k, WinogradConv2d) for k in wino.modules())
    rows = [("fp32 direct", lambda x: direct.inference(x)), ("fp32 Winograd", lambda x: wino.inference(x)),
            ("bf16 autocast", lambda x: wino.inference(x, precision="bf16")), ("bf16 weights", lambda x: half.inference(x))]
    nc = int(getattr(direct, "num_classes"))
    out = {}
    with torch.inference_mode():
        for name, fn in rows:
            t0 = time.perf_counter()
            logits = [fn(x[None]).float() for x in xs]
            out[name] = (logits, time.perf_counter() - t0)
    ref_logits = out["fp32 direct"][0]
    ref = [l.argmax(1)[0] for l in ref_logits]
    lines = [f"Run `{run.relative_to(ROOT) if run.is_relative_to(ROOT) else run}`, checkpoint `{ck.name}`, {len(files)} validation "
             f"images {tuple(xs[0].shape[1:])}, {nc} classes; {n_wino} convs on the Winograd path in the fp32 Winograd row.", "",
             "| mode | pixels with the fp32-direct label | images with 100% agreement | mIoU vs ground truth | max abs logit diff | s for all images |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, _ in rows:
        logits, secs = out[name]
        lab = [l.argmax(1)[0] for l in logits]
        same = sum(int((p == r).sum()) for p, r in zip(lab, ref)) / sum(r.numel() for r in ref)
        whole = sum(bool((p == r).all()) for p, r in zip(lab, ref)) / len(ref)
        m = IoUMetric(num_classes=nc, ignore_index=255)
        for p_, g in zip(lab, gts): m.update(p_[None], g[None])
        miou = m.compute()["mIoU"]
        diff = max(float((l - r).abs().max()) for l, r in zip(logits, ref_logits))
        lines.append(f"| {name} | {100 * same:.3f}% | {100 * whole:.0f}% | {miou:.2f} | {diff:.3g} | {secs:.1f} |")
    text = "\n".join(lines)
    print(text)
    if a.out: Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
