#!/usr/bin/env python3
"""Data-pipeline throughput (images/s) of MMSegmentation's ADE20K training recipe: segnb vs MMSeg 1.2.2 vs torchvision v2.

The recipe (configs/_base_/datasets/ade20k.py): load JPEG + PNG mask (reduce_zero_label) -> RandomResize(scale=(2048, 512),
ratio_range=(0.5, 2.0), keep_ratio=True) -> RandomCrop(512x512, cat_max_ratio=0.75) -> RandomFlip(0.5) ->
PhotoMetricDistortion -> pad to 512x512 -> Normalize, batched (batch 4), on a DataLoader with 2 workers.
Every framework produces the same thing: a float32 (4, 3, 512, 512) normalised image batch and a (4, 512, 512) label batch.

* segnb: `SegFolderDataset` + `seg_dataloaders(item_tfms=build_pipeline(ADE recipe))`; Normalize either on the batch
  in the main process (fastai's way, the default) or per item in the workers (`--segnb-item-normalize` adds that row).
* MMSeg 1.2.2: `BaseSegDataset` with the config's pipeline (`LoadImageFromFile`, `LoadAnnotations(reduce_zero_label)`,
  ..., `PackSegInputs`), torch `DataLoader(collate_fn=pseudo_collate)`, then `SegDataPreProcessor` (mean/std, bgr_to_rgb,
  size=(512, 512)) on each batch in the main process, exactly as MMSeg's runner does. It runs in the peers venv
  (~/peers/litevenv, mmcv-lite 2.1.0 + opencv; see /work/shared/bench/README.md), in a subprocess of this script
  (mmcv._ext stubbed as there); skipped with a message if that venv is absent.
* torchvision 0.29 v2: `decode_jpeg`/`decode_png`, `RandomResize` of the short side in [256, 1024) (what the ADE
  RandomResize does for ADE-shaped images), `RandomCrop(512, pad_if_needed, mask fill 255)` (no cat_max_ratio:
  torchvision has none), `RandomHorizontalFlip`, `ColorJitter(32/255, (0.5, 1.5), (0.5, 1.5), 18/180)`, `ToDtype`,
  `Normalize` per item in the workers.

The images are generated once per run (seeded, written as JPEG q=90 + PNG masks, ADE-like: 384-683 x 512-800 pixels,
5-20 regions of 150 classes), and all frameworks read the same files. Timing: per framework, a fresh DataLoader
iterator, `--warmup` batches discarded (both workers started), then the next batches timed; frameworks alternate
round-robin for `--rounds` rounds; the median images/s is reported, with the ratio to MMSeg from the same run. A second
column is the CPU cost per image of the same pipeline in one process (`num_workers=0`, one torch thread,
`time.process_time`, main-process batch work included): images/s only means something on an otherwise idle machine, the CPU cost is steadier under load.

Usage: .venv/bin/python benchmarks/bench_transforms.py [--images 64] [--rounds 3] [--quick]
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # segnb (this checkout), in either venv
from segnb.benchmark import stub_mmcv_ext  # noqa: E402  (torch + stdlib only: importable under the peers' python too)

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path.home() / "peers" / "litevenv" / "bin" / "python"
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
CROP, BS, NUM_CLASSES = 512, 4, 150


def make_images(root: Path, n: int, seed: int = 0):
    "ADE-like JPEG images + PNG masks (0 = unlabelled, 1..150) in img_dir/train, ann_dir/train."
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    (root / "img_dir/train").mkdir(parents=True, exist_ok=True); (root / "ann_dir/train").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(384, 684)), int(rng.integers(512, 801))
        k = int(rng.integers(5, 21))
        seeds = rng.uniform(0, 1, (k, 2)) * (h, w)
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        region = np.argmin([(yy - sy) ** 2 + (xx - sx) ** 2 for sy, sx in seeds], 0)
        labels = rng.integers(0, NUM_CLASSES + 1, k).astype(np.uint8)
        mask = labels[region]
        cols = rng.integers(0, 256, (k, 3)).astype(np.float32)
        img = cols[region] + rng.normal(0, 12, (h, w, 3)) + 30 * np.sin(xx / 37.0)[..., None]
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"img_dir/train/{i:05d}.jpg", quality=90)
        Image.fromarray(mask).save(root / f"ann_dir/train/{i:05d}.png")
    return root


def time_loader(make_iter, n_batches, warmup, post=None, cpu=False):
    "images/s over `n_batches` batches after `warmup` batches of a fresh iterator (`cpu`: this process's CPU ms per image)."
    import torch
    threads = torch.get_num_threads()
    if cpu: torch.set_num_threads(1)   # one thread: OpenMP spinning under load would be counted as work
    it = make_iter()
    for _ in range(warmup):
        b = next(it); post(b) if post else None
    t0, c0 = time.perf_counter(), time.process_time(); n = 0
    for _ in range(n_batches):
        b = next(it); out = post(b) if post else b
        n += out[0].shape[0]
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    del it
    torch.set_num_threads(threads)
    return dc / n * 1e3 if cpu else n / dt


# ---------------------------------------------------------------- segnb
ADE_PIPE = [dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
            dict(type="RandomCrop", crop_size=(CROP, CROP), cat_max_ratio=0.75),
            dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"), dict(type="Pad", size=(CROP, CROP))]


def segnb_loaders(root, workers, item_normalize):
    sys.path.insert(0, str(ROOT))
    from segnb.data.core import SegFolderDataset, SegMeta, seg_dataloaders
    meta = SegMeta([f"c{i}" for i in range(NUM_CLASSES)], reduce_zero_label=True)
    ds = SegFolderDataset(root, "img_dir/train", "ann_dir/train", img_suffix=".jpg", meta=meta)
    pipe = ADE_PIPE + ([dict(type="Normalize", mean=MEAN, std=STD)] if item_normalize else [])
    # without an item Normalize, seg_dataloaders normalises batches with ImageNet statistics: MMSeg's MEAN/STD divided by 255
    dls = seg_dataloaders((ds, ds), bs=BS, item_tfms=pipe, num_workers=workers, shuffle=True, drop_last=True)
    return lambda: iter(dls.train), len(ds) // BS


# ---------------------------------------------------------------- torchvision v2
class TVDataset:
    def __init__(self, root):
        import torch
        from torchvision.transforms import v2
        from torchvision import tv_tensors
        self.imgs = sorted((Path(root) / "img_dir/train").glob("*.jpg"))
        self.masks = [Path(root) / "ann_dir/train" / (p.stem + ".png") for p in self.imgs]
        self.tf = v2.Compose([
            v2.RandomResize(256, 1024),
            v2.RandomCrop(CROP, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            v2.RandomHorizontalFlip(0.5),
            v2.ColorJitter(brightness=32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18 / 180),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=False),
            v2.Normalize(MEAN, STD)])
    def __len__(self): return len(self.imgs)
    def __getitem__(self, i):
        import torch
        from torchvision.io import decode_jpeg, decode_png, read_file
        from torchvision import tv_tensors
        img = tv_tensors.Image(decode_jpeg(read_file(str(self.imgs[i]))))
        m = decode_png(read_file(str(self.masks[i])))[0]
        m = torch.where(m == 0, 255, m - 1).to(torch.uint8)  # reduce_zero_label
        img, m = self.tf(img, tv_tensors.Mask(m))
        return img.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor).long()


def tv_loaders(root, workers):
    import torch
    ds = TVDataset(root)
    dl = torch.utils.data.DataLoader(ds, batch_size=BS, shuffle=True, num_workers=workers, drop_last=True)
    return lambda: iter(dl), len(ds) // BS


# ---------------------------------------------------------------- MMSeg (runs under the peers python)
def mmseg_worker(root, workers, rounds, warmup, threads):
    "Time MMSeg's loader + preprocessor; prints one JSON line."
    import logging, torch
    torch.set_num_threads(threads)
    note = stub_mmcv_ext()
    from mmseg.utils import register_all_modules
    register_all_modules()
    from mmengine.utils.dl_utils import set_multi_processing
    set_multi_processing(distributed=False)  # what MMSeg's Runner does: cv2 threads 0, OMP/MKL 1 in workers
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    from mmseg.datasets import BaseSegDataset
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from mmengine.dataset import pseudo_collate
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
                dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
                dict(type="RandomCrop", crop_size=(CROP, CROP), cat_max_ratio=0.75),
                dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"), dict(type="PackSegInputs")]
    ds = BaseSegDataset(data_root=str(root), data_prefix=dict(img_path="img_dir/train", seg_map_path="ann_dir/train"),
                        img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=True, pipeline=pipeline,
                        metainfo=dict(classes=tuple(f"c{i}" for i in range(NUM_CLASSES))))
    dl = torch.utils.data.DataLoader(ds, batch_size=BS, shuffle=True, num_workers=workers, drop_last=True, collate_fn=pseudo_collate)
    pre = SegDataPreProcessor(mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(CROP, CROP))

    def post(b):
        out = pre(b, training=True)
        return out["inputs"], torch.stack([d.gt_sem_seg.data[0] for d in out["data_samples"]])
    res = [time_loader(lambda: iter(dl), len(ds) // BS - warmup, warmup, post) for _ in range(rounds)]
    dl0 = torch.utils.data.DataLoader(ds, batch_size=BS, shuffle=True, num_workers=0, drop_last=True, collate_fn=pseudo_collate)
    cpu = [time_loader(lambda: iter(dl0), len(ds) // BS - 1, 1, post, cpu=True) for _ in range(rounds)]
    import mmseg, mmcv, cv2
    print(json.dumps({"ips": res, "cpu": cpu, "note": note, "versions": {"mmseg": mmseg.__version__, "mmcv": mmcv.__version__, "cv2": cv2.__version__}}))


def run_mmseg(root, args):
    if not PEERS.exists():
        return None, f"SKIPPED: no peers venv at {PEERS} (see /work/shared/bench/README.md, section B, to create it)"
    env = {**os.environ, "PYTHONPATH": ""}
    cmd = [str(PEERS), __file__, "--mmseg-worker", str(root), "--workers", str(args.workers), "--rounds", "1",
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    line = next((l for l in r.stdout.splitlines()[::-1] if l.startswith("{")), None)
    if r.returncode != 0 or line is None:
        return None, f"FAILED (exit {r.returncode}): {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.stdout[-300:]}"
    return json.loads(line), None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="batches discarded per round (worker start-up)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the main process")
    ap.add_argument("--segnb-item-normalize", action="store_true", help="also time segnb with Normalize per item in the workers")
    ap.add_argument("--skip-mmseg", action="store_true"); ap.add_argument("--skip-torchvision", action="store_true")
    ap.add_argument("--quick", action="store_true", help="16 images, 1 round: a smoke test")
    ap.add_argument("--mmseg-worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help="reuse a folder of generated images")
    a = ap.parse_args()
    if a.mmseg_worker: return mmseg_worker(Path(a.mmseg_worker), a.workers, a.rounds, a.warmup, a.threads)
    if a.quick: a.images, a.rounds, a.warmup = 24, 1, 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    torch.set_num_threads(a.threads)
    root = Path(a.data) if a.data else Path(tempfile.mkdtemp(prefix="bench_tfms_"))
    if not (root / "img_dir/train").exists() or len(list((root / "img_dir/train").glob("*.jpg"))) < a.images:
        t0 = time.perf_counter(); make_images(root, a.images); print(f"# wrote {a.images} images to {root} in {time.perf_counter() - t0:.1f}s")
    n_batches = a.images // BS - a.warmup
    if n_batches < 1: sys.exit(f"--images {a.images} gives no timed batches after {a.warmup} warm-up batches of {BS}")
    makers = {"segnb (Normalize on the batch)": (segnb_loaders(root, a.workers, False), segnb_loaders(root, 0, False))}
    if a.segnb_item_normalize: makers["segnb (Normalize per item)"] = (segnb_loaders(root, a.workers, True), segnb_loaders(root, 0, True))
    if not a.skip_torchvision: makers["torchvision 0.29 v2"] = (tv_loaders(root, a.workers), tv_loaders(root, 0))
    MM = "mmseg 1.2.2 (+ SegDataPreProcessor)"
    res = {k: [] for k in makers}; cpu = {k: [] for k in makers}; mm_err = None
    if a.skip_mmseg: mm_err = "SKIPPED (--skip-mmseg)"
    else: res[MM], cpu[MM] = [], []
    for r in range(a.rounds):
        for name, ((mk, _), (mk0, n0)) in makers.items():
            res[name].append(time_loader(mk, n_batches, a.warmup))
            cpu[name].append(time_loader(mk0, n0 - 1, 1, cpu=True))
        if mm_err is None:
            out, mm_err = run_mmseg(root, a)
            if out: res[MM] += out["ips"]; cpu[MM] += out["cpu"]; mm_note = out
            else: del res[MM], cpu[MM]
        print(f"# round {r + 1}/{a.rounds}: " + ", ".join(f"{k}: {v[-1]:.1f} img/s, {cpu[k][-1]:.1f} CPU ms/img" for k, v in res.items() if v), flush=True)
    rows = {k: (statistics.median(v), statistics.median(cpu[k])) for k, v in res.items() if v}
    ref = rows.get(MM)
    import torchvision, fastai
    print(f"\n{a.images} images, batch {BS}, {a.workers} workers, {a.rounds} round(s), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, fastai {fastai.__version__}" + (f", {mm_note['versions']} ({mm_note['note']})" if MM in rows else ""))
    try: print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (images/s needs an idle machine; CPU ms/img is steadier)")
    except OSError: pass
    print(f"{'pipeline':40s} {'images/s':>9s} {'x mmseg':>8s} {'CPU ms/img (1 process)':>23s} {'x mmseg':>8s}")
    for k, (v, c) in rows.items():
        print(f"{k:40s} {v:9.1f} {v / ref[0] if ref else float('nan'):8.2f} {c:23.1f} {ref[1] / c if ref else float('nan'):8.2f}")
    if mm_err: print(f"mmseg: {mm_err}")


if __name__ == "__main__":
    main()
