#!/usr/bin/env python3
"""mIoU over N prediction/label pairs: segnb `IoUMetric` vs MMSeg `IoUMetric` vs torchmetrics `MulticlassJaccardIndex`.

Same data as /work/shared/bench/peers_cpu.py (seed 0: N pairs of SIZE x SIZE int64 maps, 150 classes, half of the
predictions wrong, 5 % of the labels 255), same timing rule: one warm-up per implementation, then `--runs` rounds,
one call per implementation per round (round-robin, so background load hits all alike), median per implementation.

All implementations are timed in ONE process. When mmseg/torchmetrics are not importable here, the script re-runs
itself under `--peers-python` (default ~/peers/litevenv/bin/python, the peers venv of /work/shared/bench/README.md, same
torch version) with this repository first on sys.path and this venv's site-packages last (for fastai & co.; torch,
numpy, mmseg and torchmetrics stay the peers venv's), and checks that it built the same data (checksum).
The `x ref` column is the ratio to peers_cpu.py's reference (boolean mask + int64 bincount per pair) in the same run.

Usage:  .venv/bin/python benchmarks/bench_metrics.py [--pairs 100] [--size 512] [--runs 5] [--threads 2] [--quick]
"""
from __future__ import annotations
import argparse, contextlib, io, json, os, statistics, subprocess, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # segnb (this checkout), in either venv
from segnb.benchmark import stub_mmcv_ext  # noqa: E402  (torch + stdlib only: importable under the peers' python too)

NUM_CLASSES, IGNORE = 150, 255
DEFAULT_PEERS = Path.home() / "peers" / "litevenv" / "bin" / "python"
REF, SEGNB = "torch.bincount per pair (peers_cpu.py reference)", "segnb IoUMetric (update per pair + compute)"


def make_pairs(n, size, C=NUM_CLASSES):
    "peers_cpu.py's data: labels uniform in [0, C), half of the predictions replaced at random, 5 % of labels ignored."
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (n, size, size), generator=g)
    preds = labels.clone()
    wrong = torch.rand((n, size, size), generator=g) < 0.5
    preds[wrong] = torch.randint(0, C, (int(wrong.sum()),), generator=g)
    labels[torch.rand((n, size, size), generator=g) < 0.05] = IGNORE
    return preds, labels


def checksum(preds, labels):
    return int((labels[:, ::7, ::5].long() * 1000003 + preds[:, ::7, ::5].long()).sum())


def miou_bincount(preds, labels, C=NUM_CLASSES):
    "The reference of peers_cpu.py: boolean mask, index, one int64 bincount per pair."
    cm = torch.zeros(C * C, dtype=torch.int64)
    for p, l in zip(preds, labels):
        p, l = p.reshape(-1), l.reshape(-1)
        k = l != IGNORE
        cm += torch.bincount(l[k] * C + p[k], minlength=C * C)
    cm = cm.view(C, C).double()
    inter = cm.diag()
    return torch.nanmean(inter / (cm.sum(0) + cm.sum(1) - inter)).item()


def peer_impls():
    "MMSeg and torchmetrics implementations importable in this interpreter: {name: fn or error string}."
    out = {}
    try:
        stub_mmcv_ext()
        import logging
        from mmseg.evaluation.metrics import IoUMetric as MMIoU
        try:
            from mmengine.logging import MMLogger
            lg = MMLogger.get_current_instance(); lg.setLevel(logging.ERROR)
            for h in lg.handlers: h.setLevel(logging.ERROR)
        except Exception: pass

        def mm_full(preds, labels, C=NUM_CLASSES):
            m = MMIoU(iou_metrics=["mIoU"], ignore_index=IGNORE)
            m.dataset_meta = dict(classes=tuple(f"c{i}" for i in range(C)))
            for p, l in zip(preds, labels):
                m.process({}, [dict(pred_sem_seg=dict(data=p[None]), gt_sem_seg=dict(data=l[None]))])
            with contextlib.redirect_stdout(io.StringIO()):
                res = m.compute_metrics(m.results)
            return res["mIoU"] / 100.0
        out["mmseg IoUMetric.process + compute_metrics"] = mm_full
    except Exception as e:  # noqa: BLE001
        out["mmseg IoUMetric"] = f"unavailable ({type(e).__name__}: {e})"
    try:
        from torchmetrics.classification import MulticlassJaccardIndex

        def tm(preds, labels, C=NUM_CLASSES):
            m = MulticlassJaccardIndex(num_classes=C, ignore_index=IGNORE, average="macro", validate_args=False)
            for p, l in zip(preds, labels): m.update(p, l)
            return m.compute().item()
        out["torchmetrics MulticlassJaccardIndex(validate_args=False)"] = tm
    except Exception as e:  # noqa: BLE001
        out["torchmetrics MulticlassJaccardIndex"] = f"unavailable ({type(e).__name__}: {e})"
    return out


def segnb_impl():
    from segnb.metrics import IoUMetric

    def ours(preds, labels, C=NUM_CLASSES):
        m = IoUMetric(C, iou_metrics=["mIoU"], ignore_index=IGNORE)
        for p, l in zip(preds, labels): m.update(p, l)
        return m.compute()["mIoU"] / 100.0
    return ours


def time_impls(impls: dict, preds, labels, runs):
    "Warm-up (also gives the value), then round-robin timed runs; {name: (median ms, [ms...], value)}."
    ok = {n: f for n, f in impls.items() if callable(f)}
    vals = {n: f(preds, labels) for n, f in ok.items()}
    times = {n: [] for n in ok}
    for _ in range(runs):
        for n, f in ok.items():
            t0 = time.perf_counter(); f(preds, labels); times[n].append((time.perf_counter() - t0) * 1e3)
    return {n: (statistics.median(times[n]), times[n], float(vals[n])) for n in ok}


def run_all(args, extra_paths=()):
    "Time the reference, segnb, MMSeg and torchmetrics round-robin in this process; a JSON-able dict."
    for i, pth in enumerate(extra_paths):   # repo root first, segnb's venv site-packages last (torch stays this venv's)
        if i == 0: sys.path.insert(0, pth)
        else: sys.path.append(pth)
    torch.set_num_threads(args.threads)
    preds, labels = make_pairs(args.pairs, args.size)
    impls = {REF: miou_bincount, SEGNB: segnb_impl(), **peer_impls()}
    res = time_impls(impls, preds, labels, args.runs)
    import importlib.metadata as md
    vers = {}
    for p in ["torch", "mmsegmentation", "mmcv-lite", "mmcv", "torchmetrics", "fastai"]:
        try: vers[p] = md.version(p)
        except md.PackageNotFoundError: pass
    return {"checksum": checksum(preds, labels), "results": res, "python": sys.executable, "versions": vers,
            "errors": {n: f for n, f in impls.items() if not callable(f)}}


def report(args, out, t_start):
    N, res = args.pairs, out["results"]
    print(f"# bench_metrics.py: mIoU over {N} pairs of {args.size}x{args.size}, {NUM_CLASSES} classes, 5% ignore ({IGNORE}); "
          f"torch threads={args.threads}; one process, round-robin, median of {args.runs} runs after 1 warm-up")
    print(f"# process: {out['python']}; " + ", ".join(f"{k}={v}" for k, v in out["versions"].items()))
    h = f"{'implementation':<58} {'ms total':>9} {'ms/pair':>8} {'min/pair':>8} {'x ref':>6} {'mIoU':>9}  runs (ms)"
    print(h); print("-" * len(h))
    ref = res[REF][0]
    for n, (med, ts, v) in res.items():
        print(f"{n:<58} {med:9.1f} {med / N:8.3f} {min(ts) / N:8.3f} {med / ref:6.2f} {v:9.6f}  {' '.join(f'{t:.0f}' for t in ts)}")
    for n, e in out["errors"].items(): print(f"{n}: {e}")
    print("x ref = time / the peers_cpu.py reference (mask + int64 bincount per pair), same process (lower is faster).")
    ours = res[SEGNB][0]
    for key, target in [("mmseg", 5.0), ("torchmetrics", 2.0)]:
        r = next((v for n, v in res.items() if n.startswith(key)), None)
        if r is None: print(f"speed-up vs {key}: not measured"); continue
        best = min(r[1]) / min(res[SEGNB][1])
        print(f"speed-up vs {key}: {r[0] / ours:.1f}x on medians, {best:.1f}x on best runs "
              f"(target >= {target:g}x: {'meets' if min(r[0] / ours, best) >= target else 'MISSES'})")
    vals = [v[2] for v in res.values()]
    print(f"mIoU values agree to {max(vals) - min(vals):.2e} (MMSeg rounds to 2 decimals of a percent)")
    print(f"# total wall time {time.perf_counter() - t_start:.0f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="20 pairs, 3 runs: a smoke test on a busy machine")
    ap.add_argument("--peers-python", default=str(DEFAULT_PEERS), help="interpreter with mmseg and torchmetrics")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick: args.pairs, args.runs = min(args.pairs, 20), min(args.runs, 3)
    if args.worker is not None:
        print(json.dumps(run_all(args, args.worker))); return
    t_start = time.perf_counter()
    missing = [n for n, f in peer_impls().items() if not callable(f)]
    py = Path(args.peers_python).expanduser()
    if not missing or not py.exists():
        if missing: print(f"# {', '.join(missing)}: not importable here and no interpreter at {py} (--peers-python)")
        return report(args, run_all(args), t_start)
    import site
    repo = str(Path(__file__).resolve().parents[1])
    sp = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    cmd = [str(py), os.path.abspath(__file__), "--pairs", str(args.pairs), "--size", str(args.size), "--runs", str(args.runs),
           "--threads", str(args.threads), "--worker", repo, *sp]
    print(f"# mmseg/torchmetrics are not importable here: running everything in {py} (segnb from {repo}, "
          f"its other dependencies from {', '.join(sp)})", flush=True)
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=3600)
    if cp.returncode != 0: raise SystemExit(f"worker failed ({cp.returncode}):\n{cp.stderr[-3000:]}")
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    if out["checksum"] != checksum(*make_pairs(args.pairs, args.size)):   # the worker's torch built the same data
        raise SystemExit("the worker built different data (checksum mismatch): do both interpreters have the same torch?")
    report(args, out, t_start)


if __name__ == "__main__":
    main()
