#!/usr/bin/env python3
"""CPU forward latency of segnb's headline models next to MMSegmentation 1.2.2's identical architectures and SMP's.

Models (ADE20K settings, 150 classes, random weights): DeepLabV3+ R50-D8, PSPNet R50-D8, FCN R50-D8, UPerNet R50,
SegFormer MiT-B0. segnb rows are built from segnb's model-zoo configs, MMSeg rows from the configs shipped in the
mmseg wheel (SyncBN -> BN, no pretrained weights), SMP rows from segmentation_models_pytorch (encoder_weights=None).

Every row returns logits at the input size (MMSeg: `model(x, mode='tensor')` + the bilinear resize of
`test_cfg.mode='whole'`, as in /work/shared/bench/peers_cpu.py; segnb: `model.inference(x)`), eval mode, under
`torch.inference_mode()`. segnb runs its fast path (`optimize_for_inference()`: exact conv-BN fusion, exact head
reordering, Winograd F(4x4, 3x3) for the wide 3x3 convs, channels-last) in fp32, the same without Winograd ("fp32
direct convs"), with `inference(x, precision="bf16")` (CPU autocast) and with bf16 weights
(`optimize_for_inference(dtype=torch.bfloat16)`); `--ablation` adds segnb without any of the fast path. Each segnb row
reports the share of pixels whose label equals the "fp32 direct convs" label. GFLOP/s is always the model's FLOPs
(direct convolution) over the time, also for the Winograd row, which executes fewer multiplications.

The peers run in their own venv (default ~/peers/litevenv, override with --peers-python): this script starts itself
there as a worker and drives it over a pipe, so timing is round-robin across ALL rows (one forward per row per
round; only one forward runs at a time) and background load hits every row alike. FLOPs are counted for every row
by the same method (torch.utils.flop_counter.FlopCounterMode on the first warm-up call, attention on the math path),
so GFLOP/s = FLOPs / median time is comparable across frameworks.

Usage:
    .venv/bin/python benchmarks/bench_forward.py                 # batch 2, 512x512, 2 threads, median of 5
    .venv/bin/python benchmarks/bench_forward.py --quick         # smoke test: 128x128, batch 1, 2 runs
    .venv/bin/python benchmarks/bench_forward.py --only segformer --runs 7 --json out.json
    .venv/bin/python benchmarks/bench_forward.py --cpu-time     # on a busy machine: CPU seconds instead of wall-clock
"""
import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

if "--cpu-time" in sys.argv:
    # idle OpenMP threads must sleep, not spin, or their waiting counts as CPU time; libgomp reads this when torch loads
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # segnb (this checkout), in either venv
from segnb.benchmark import stub_mmcv_ext, strip_mmseg_cfg  # noqa: E402  (torch + stdlib only: importable under the peers' python too)
from segnb.cpu_memory import REUSE_ENV  # noqa: E402  (glibc's settings of reuse_cpu_memory(), which optimize_for_inference applies on CPU)

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]

# key, segnb config (segnb/configs), MMSeg config (mmseg/.mim/configs)
MODELS = [
    ("deeplabv3plus_r50-d8", "deeplabv3plus_r50-d8_80k_ade20k-512x512", "deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py"),
    ("pspnet_r50-d8", "pspnet_r50-d8_80k_ade20k-512x512", "pspnet/pspnet_r50-d8_4xb4-80k_ade20k-512x512.py"),
    ("fcn_r50-d8", "fcn_r50-d8_80k_ade20k-512x512", "fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py"),
    ("upernet_r50", "upernet_r50_80k_ade20k-512x512", "upernet/upernet_r50_4xb4-80k_ade20k-512x512.py"),
    ("segformer_mit-b0", "segformer_mit-b0_160k_ade20k-512x512", "segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py"),
]
# label, SMP class, encoder, kwargs, key of the segnb/MMSeg row with the same architecture (None: a different one)
SMP_MODELS = [
    ("Segformer(mit_b0)", "Segformer", "mit_b0", {}, "segformer_mit-b0"),
    ("DeepLabV3Plus(resnet50) OS8", "DeepLabV3Plus", "resnet50", {"encoder_output_stride": 8}, None),
    ("UPerNet(resnet50)", "UPerNet", "resnet50", {}, None),
]
NUM_CLASSES = 150


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per row (the first also counts FLOPs)")
    p.add_argument("--runs", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--only", default="", help="regex on the model key (e.g. 'segformer|pspnet')")
    p.add_argument("--peers-python", default=str(Path.home() / "peers/litevenv/bin/python"))
    p.add_argument("--skip-mmseg", action="store_true")
    p.add_argument("--skip-smp", action="store_true")
    p.add_argument("--no-peers-reuse", action="store_true",
                   help="skip the second peers process that runs MMSeg/SMP with segnb's memory-reuse malloc settings")
    p.add_argument("--ablation", action="store_true", help="also time segnb without fusion/channels-last")
    p.add_argument("--time-budget", type=float, default=900, help="seconds for the timed rounds (at least 3 rounds, 2 with --quick)")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke test: 128x128, batch 1, 1 warm-up, 2 runs")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with the process CPU clock (sum over threads) and OMP_WAIT_POLICY=PASSIVE: for a busy shared "
                        "machine, where wall-clock times mostly measure the other jobs")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick: a.size, a.batch, a.warmup, a.runs = 128, 1, 1, 2
    if a.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    return a


def make_input(a):
    g = torch.Generator().manual_seed(0)
    return torch.randn(a.batch, 3, a.size, a.size, generator=g)


def n_params(module, skip_prefix=None):
    return sum(p.numel() for n, p in module.named_parameters() if not (skip_prefix and n.startswith(skip_prefix)))


def count_flops(fn, x):
    "FLOPs of one call, attention on the math path so that every framework is counted alike; returns (flops, output)."
    from torch.utils.flop_counter import FlopCounterMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        c = FlopCounterMode(display=False)
        with c, sdpa_kernel(SDPBackend.MATH), torch.inference_mode():
            out = fn(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(c.get_total_flops()), out


CLOCK = time.perf_counter          # --cpu-time: time.process_time (CPU seconds of all threads of the process)


def timed_ms(fn, x):
    with torch.inference_mode():
        t0 = CLOCK()
        fn(x)
        return (CLOCK() - t0) * 1e3


# ---------------------------------------------------------------------------------------------- peers (worker side)
def build_peers(a):
    "[(key, framework, label, forward fn, params, params_aux, error)] for MMSeg and SMP."
    rows, only = [], re.compile(a.only) if a.only else None
    if not a.skip_mmseg:
        try:
            stub_mmcv_ext()
            import mmseg
            from mmengine.config import Config
            from mmseg.registry import MODELS as MM
            from mmseg.utils import register_all_modules
            from mmseg.models.utils import resize
            register_all_modules(init_default_scope=True)
            root = Path(mmseg.__file__).parent / ".mim" / "configs"
            for key, _, rel in MODELS:
                if only and not only.search(key): continue
                try:
                    cfg = Config.fromfile(str(root / rel))
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        m = MM.build(strip_mmseg_cfg(cfg.model.to_dict())); m.init_weights()
                    m.eval()
                    ac = getattr(m.decode_head, "align_corners", False)
                    fwd = (lambda m, ac: lambda x: resize(m(x, mode="tensor"), size=x.shape[2:], mode="bilinear", align_corners=ac))(m, ac)
                    rows.append((key, f"mmseg {mmseg.__version__}", "fp32", fwd, n_params(m, "auxiliary_head"),
                                 n_params(m) - n_params(m, "auxiliary_head"), None))
                except Exception as e:  # noqa: BLE001
                    rows.append((key, "mmseg", "fp32", None, 0, 0, f"{type(e).__name__}: {e}"[:200]))
        except Exception as e:  # noqa: BLE001
            rows.append(("*", "mmseg", "fp32", None, 0, 0, f"mmseg unavailable: {type(e).__name__}: {e}"[:200]))
    if not a.skip_smp:
        try:
            import segmentation_models_pytorch as smp
            for label, arch, enc, kw, same in SMP_MODELS:
                if only and not only.search(label) and not (same and only.search(same)): continue
                try:
                    m = getattr(smp, arch)(encoder_name=enc, encoder_weights=None, classes=NUM_CLASSES, **kw).eval()
                    rows.append((same or label, f"smp {smp.__version__}", label, m, n_params(m), 0, None))
                except Exception as e:  # noqa: BLE001
                    rows.append((same or label, "smp", label, None, 0, 0, f"{type(e).__name__}: {e}"[:200]))
        except Exception as e:  # noqa: BLE001
            rows.append(("*", "smp", "-", None, 0, 0, f"smp unavailable: {type(e).__name__}: {e}"[:200]))
    return rows


def worker_main(a):
    torch.set_num_threads(a.threads)
    x = make_input(a)
    rows = build_peers(a)
    out = []
    for i, (key, fw, label, fwd, params, aux, err) in enumerate(rows):
        flops = None
        if fwd is not None:
            try:
                flops, _ = count_flops(fwd, x)
                for _ in range(a.warmup - 1): timed_ms(fwd, x)
            except Exception as e:  # noqa: BLE001
                err, rows[i] = f"{type(e).__name__}: {e}"[:200], (key, fw, label, None, params, aux, err)
        out.append(dict(id=i, key=key, framework=fw, variant=label, params=params, params_aux=aux, flops=flops, error=err))
    print(json.dumps(dict(ready=out)), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit": break
        if cmd[0] == "run": print(json.dumps(dict(ms=timed_ms(rows[int(cmd[1])][3], x))), flush=True)


# ------------------------------------------------------------------------------------------------------ main side
class Worker:
    "The peers process: answers `run <id>` with the time of one forward."
    def __init__(self, a, reuse_memory=False):
        args = [a.peers_python, str(Path(__file__).resolve()), "--worker", "--batch", str(a.batch), "--size", str(a.size),
                "--threads", str(a.threads), "--warmup", str(a.warmup)]
        if a.only: args += ["--only", a.only]
        if a.skip_mmseg: args.append("--skip-mmseg")
        if a.skip_smp: args.append("--skip-smp")
        if a.cpu_time: args.append("--cpu-time")
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": ""}
        if reuse_memory: env.update(REUSE_ENV)
        self.reuse_memory = reuse_memory
        import tempfile
        self.log = tempfile.TemporaryFile("w+")     # a file, not a pipe: a chatty worker cannot block on a full pipe
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
                                  cwd=str(Path(__file__).resolve().parent))
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"peers worker ({a.peers_python}) exited: {self.stderr()}")
        self.rows = json.loads(line)["ready"]

    def run(self, i):
        self.p.stdin.write(f"run {i}\n"); self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line: raise RuntimeError(f"peers worker died: {self.stderr()}")
        return json.loads(line)["ms"]

    def stderr(self):
        self.log.seek(0)
        return self.log.read()[-2000:]

    def close(self):
        with contextlib.suppress(Exception):
            self.p.stdin.write("quit\n"); self.p.stdin.flush(); self.p.wait(timeout=30)


def build_segnb(a):
    sys.path.insert(0, str(ROOT))
    from segnb.config import Config
    from segnb.registry import MODELS as SM
    only = re.compile(a.only) if a.only else None
    rows = []
    for key, cfg_name, _ in MODELS:
        if only and not only.search(key): continue
        cfg = Config.fromfile(ROOT / "segnb" / "configs" / f"{cfg_name}.yaml")
        def make():
            torch.manual_seed(0)
            return SM.build(cfg.model.to_dict()).eval()
        m = make()
        params, aux = n_params(m, "auxiliary_head"), n_params(m) - n_params(m, "auxiliary_head")
        if a.ablation: rows.append(dict(key=key, framework="segnb", variant="fp32 (no fusion, NCHW)", fn=m.inference, params=params, params_aux=aux))
        direct = make().optimize_for_inference(winograd=False)
        rows.append(dict(key=key, framework="segnb", variant="fp32 direct convs", fn=direct.inference, params=params, params_aux=aux))
        fast = make().optimize_for_inference()
        rows.append(dict(key=key, framework="segnb", variant="fp32", fn=fast.inference, params=params, params_aux=aux))
        rows.append(dict(key=key, framework="segnb", variant="bf16 autocast", fn=lambda x, f=fast: f.inference(x, precision="bf16"),
                         params=params, params_aux=aux))
        half = make().optimize_for_inference(dtype=torch.bfloat16)
        rows.append(dict(key=key, framework="segnb", variant="bf16 weights", fn=half.inference, params=params, params_aux=aux))
    return rows


def main():
    a = parse_args()
    if a.worker: return worker_main(a)
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    x = make_input(a)
    t_start = time.perf_counter()
    print(f"# bench_forward: batch {a.batch} x 3 x {a.size} x {a.size}, {a.threads} threads, {a.runs} timed rounds, torch {torch.__version__}, "
          f"clock: {'process CPU time' if a.cpu_time else 'wall'}", flush=True)
    rows = build_segnb(a)
    outs = {}
    for r in rows:
        r["flops"], out = count_flops(r["fn"], x)
        for _ in range(a.warmup - 1): timed_ms(r["fn"], x)
        outs[(r["key"], r["variant"])] = out.argmax(1)
        r["ms"], r["error"] = [], None
    for r in rows:
        ref = outs.get((r["key"], "fp32 direct convs"))
        if r["framework"] == "segnb" and r["variant"] != "fp32 direct convs" and ref is not None:
            # Winograd runs fewer multiplications than the model has: GFLOP/s stays the model's FLOPs (direct conv) / time
            r["flops_executed"], r["flops"] = r["flops"], next(q["flops"] for q in rows if q["key"] == r["key"] and q["variant"] == "fp32 direct convs")
        if r["variant"] != "fp32 direct convs" and ref is not None:
            r["agreement"] = float((outs[(r["key"], r["variant"])] == ref).float().mean())
    workers = []
    if not (a.skip_mmseg and a.skip_smp):
        if not Path(a.peers_python).exists():
            print(f"# peers python {a.peers_python} not found: MMSeg/SMP rows skipped", flush=True)
        else:
            workers = [Worker(a)] + ([] if a.no_peers_reuse else [Worker(a, reuse_memory=True)])
            for wk in workers:
                for w in wk.rows:
                    rows.append(dict(key=w["key"], framework=w["framework"], variant=w["variant"] + (", reuse memory" if wk.reuse_memory else ""),
                                     params=w["params"], params_aux=w["params_aux"], flops=w["flops"], error=w["error"], ms=[],
                                     remote=w["id"], worker=wk))
    print(f"# built and warmed up in {time.perf_counter() - t_start:.0f} s", flush=True)
    live = [r for r in rows if not r.get("error")]
    deadline = time.perf_counter() + a.time_budget
    min_runs = 2 if a.quick else 3
    try:
        for i in range(a.runs):
            t0 = time.perf_counter()
            for r in live:
                r["ms"].append(r["worker"].run(r["remote"]) if "remote" in r else timed_ms(r["fn"], x))
            rnd = time.perf_counter() - t0
            if i + 1 >= min_runs and i + 1 < a.runs and time.perf_counter() + rnd > deadline:
                print(f"# time budget: stopped after {i + 1} of {a.runs} rounds", flush=True)
                break
    finally:
        for wk in workers: wk.close()
    report(rows, a)


def report(rows, a):
    for r in rows: r["median_ms"] = statistics.median(r["ms"]) if r.get("ms") else None
    same_arch = {k for k, _, _ in MODELS}
    def peer(fw, reuse):
        return {r["key"]: r["median_ms"] for r in rows if r["framework"].startswith(fw) and r["median_ms"] and r["key"] in same_arch
                and r["variant"].endswith(", reuse memory") == reuse}
    mm, mm_r, smp_same, smp_r = peer("mmseg", False), peer("mmseg", True), peer("smp", False), peer("smp", True)
    ms_h, rate_h = ("median CPU ms", "GFLOP per CPU s") if a.cpu_time else ("median ms", "GFLOP/s")
    print(f"\n| model | framework | variant | params (M) | GFLOPs | {ms_h} | {rate_h} | x MMSeg fp32 | x MMSeg fp32, reuse memory "
          f"| x SMP | x SMP, reuse memory | labels = fp32 direct |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    order = {k: i for i, (k, _, _) in enumerate(MODELS)}
    ratio = lambda ref, r: f"{ref[r['key']] / r['median_ms']:.2f}" if r["key"] in ref and r["median_ms"] else "-"
    for r in sorted(rows, key=lambda r: (order.get(r["key"], 99), r["key"], r["framework"] != "segnb", r["framework"], r["variant"])):
        p = f"{r['params'] / 1e6:.2f}" + (f" (+{r['params_aux'] / 1e6:.2f} aux)" if r.get("params_aux") else "")
        if r.get("error"):
            print(f"| {r['key']} | {r['framework']} | {r['variant']} | {p} | - | - | - | - | - | - | - | FAILED: {r['error']} |"); continue
        ms, fl = r["median_ms"], r["flops"]
        ag = f"{100 * r['agreement']:.2f}%" if "agreement" in r else "-"
        print(f"| {r['key']} | {r['framework']} | {r['variant']} | {p} | {fl / 1e9:.1f} | {ms:.1f} | {fl / 1e9 / (ms / 1e3):.1f} "
              f"| {ratio(mm, r)} | {ratio(mm_r, r)} | {ratio(smp_same, r)} | {ratio(smp_r, r)} | {ag} |")
    print(f"\n# rows timed round-robin; params exclude auxiliary heads (not run at inference); "
          f"GFLOPs counted by FlopCounterMode (multiply-add = 2); segnb rows use the model's FLOPs (direct convolution) "
          f"also where Winograd convs execute fewer; 'labels = fp32 direct': share of pixels labelled as by segnb's fp32 direct-conv row; "
          f"segnb runs with reuse_cpu_memory() (set by optimize_for_inference on CPU); the peers' 'reuse memory' rows run in a "
          f"second process started with the same glibc settings ({' '.join(f'{k}={v}' for k, v in REUSE_ENV.items())})")
    if a.json:
        keep = ("key", "framework", "variant", "params", "params_aux", "flops", "flops_executed", "ms", "median_ms", "agreement", "error")
        Path(a.json).write_text(json.dumps(dict(args=vars(a), rows=[{k: r.get(k) for k in keep} for r in rows]), indent=1))


if __name__ == "__main__":
    main()
