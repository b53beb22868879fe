#!/usr/bin/env python3
"""CPU training-step time of segnb's DeepLabV3+ R50-D8 (+ auxiliary FCN head) next to MMSegmentation 1.2.2's identical model.

One training step = forward, decode + auxiliary losses, backward, SGD step (lr 0.01, momentum 0.9, weight decay 5e-4),
batch 2 x 3 x 512 x 512, 150 classes, random weights and random data (the same tensors for every row). Rows:

  (a) segnb through the fastai Learner: `learner_from_config` on the model-zoo config
      `segnb/configs/deeplabv3plus_r50-d8_80k_ade20k-512x512.yaml`, trained with `learn.fit_iters` (what `segnb train` runs:
      IterBasedTrainLoop, PolyLR ParamSchedulerCallback, LoggerCallback, CheckpointCallback between checkpoints, Recorder).
      The time of an iteration runs from the first `before_batch` callback to the last `after_batch` callback, so every
      per-iteration callback counts and data loading does not (the batches are pre-made tensors in a tiny in-memory fastai
      DataLoader);
  (b) a plain PyTorch loop over segnb's identical model (zero_grad, forward, `model.loss`, backward, `optimizer.step`):
      (a) / (b) - 1 is segnb's Learner overhead;
  (c) MMSegmentation 1.2.2 `model.train_step(data, OptimWrapper(SGD))` on its identical model built from the config in the
      mmseg wheel (SyncBN -> BN, no init_cfg), as /work/shared/bench/peers_cpu.py does. It runs in the peers venv
      (default ~/peers/litevenv, --peers-python) as a worker process that this script drives over a pipe.

All rows are timed round-robin (one step per row per round, only one step runs at a time), so background load hits every
row alike; each row starts from the same weights (a and b; c has MMSeg's own random init) and every step of every row
draws dropout from the same seed, so (a) and (b) compute the same losses (checked and printed).

Also: (a') the Learner with `WinogradCallback` (the wide 3x3 convs trained with Winograd F(4x4, 3x3); skip with
--no-winograd), and (c') MMSeg in a second worker process started with the malloc settings that segnb's
`reuse_cpu_memory()` applies (SegLearner.fit turns it on for CPU training; this script sets them for its whole process
at start, because its Learner rows run in threads). `--peers-reuse off|only` keeps one of (c)/(c'): with every row and
both MMSeg workers the run needs more than the 24 GB of this machine.

`--amp` adds (a) and (b) under bf16 autocast on CPU (`segnb.train.enable_amp`: fp32 weights, bf16 compute) and a
loss-curve check on a small model (DeepLabV3+ on timm resnet18 at output stride 16, 128x128 synthetic scenes from `segnb.data.synthetic`,
100 iterations fp32 vs bf16 from the same seed) whose plot is saved under benchmarks/results/.

Usage:
    .venv/bin/python benchmarks/bench_train.py --quick            # smoke test: 128x128, 1 warm-up + 2 timed rounds, 30-step bf16 curve
    .venv/bin/python benchmarks/bench_train.py --amp              # the full setting (slow: ~20 s per MMSeg step on 2 cores)
    .venv/bin/python benchmarks/bench_train.py --amp --runs 3 --warmup 1 --threads 2 [--skip-mmseg]
"""
import argparse
import contextlib
import copy
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

# GNU OpenMP (torch's) spins up to ~300k iterations at every barrier unless the process runs more OpenMP threads than
# there are CPUs, in which case it barely spins. On a loaded machine that spinning burns the time slices the partner
# thread needs: a process with one 2-thread team (the MMSeg worker) measured 2-6x slower than the same segnb step in a
# process that also had the Learner's thread team. One wait policy for every row (set before torch loads libgomp; the
# worker inherits it); export OMP_WAIT_POLICY yourself to choose another.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# segnb's memory reuse (reuse_cpu_memory, which SegLearner.fit applies) is set here for the whole process from its
# start: glibc fixes its arena limit when the first extra thread allocates, and the Learner rows run in threads (in
# `segnb train` the fit runs on the main thread, whose heap the mallopt call at fit time covers)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # segnb (this checkout), in either venv
from segnb.cpu_memory import REUSE_ENV  # noqa: E402  (stdlib only)
if "--worker" not in sys.argv and any(os.environ.get(k) != v for k, v in REUSE_ENV.items()):
    os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **REUSE_ENV})
import torch
from segnb.benchmark import stub_mmcv_ext, strip_mmseg_cfg  # noqa: E402  (torch + stdlib only: importable under the peers' python too)

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NUM_CLASSES = 150
SEGNB_CFG = ROOT / "segnb" / "configs" / "deeplabv3plus_r50-d8_80k_ade20k-512x512.yaml"
MMSEG_CFG = "deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py"
# MMSeg's ADE20K data_preprocessor (the segnb rows get the images normalised the same way beforehand)
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
LR, MOMENTUM, WD = 0.01, 0.9, 5e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (every row, round-robin)")
    p.add_argument("--runs", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--amp", action="store_true", help="also time segnb under bf16 autocast and check its loss curve")
    p.add_argument("--curve-steps", type=int, default=100, help="iterations of the fp32-vs-bf16 loss-curve check (--amp)")
    p.add_argument("--curve-only", action="store_true", help="only the fp32-vs-bf16 loss-curve check (implies --amp)")
    p.add_argument("--no-curve", action="store_true", help="with --amp: time the bf16 rows but skip the loss-curve check")
    p.add_argument("--skip-mmseg", action="store_true")
    p.add_argument("--peers-reuse", choices=("both", "off", "only"), default="both",
                   help="MMSeg workers: as shipped and with segnb's malloc settings (both), only as shipped (off), or only "
                        "with the malloc settings (only); 'both' needs ~24 GB with every row")
    p.add_argument("--no-winograd", action="store_true", help="skip the Learner row with WinogradCallback")
    p.add_argument("--control", action="store_true", help="also run segnb's plain loop inside the MMSeg worker process "
                                                           "(its own row), to tell process effects from framework effects")
    p.add_argument("--peers-python", default=str(Path.home() / "peers/litevenv/bin/python"))
    p.add_argument("--out", default=None, help="text report (default benchmarks/results/bench_train.txt, "
                                               "bench_train_quick.txt with --quick)")
    p.add_argument("--json", default=None, help="also write the raw timings as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke test: 128x128, 1 warm-up + 2 timed rounds, 30-step curve")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.curve_only: a.amp = True
    if a.quick: a.size, a.warmup, a.runs, a.curve_steps = 128, 1, 2, 30   # batch stays 2: the ASPP image-pool BN needs 2
    if a.out is None: a.out = str(RESULTS / ("bench_train_quick.txt" if a.quick else "bench_train.txt"))
    return a


def make_data(a):
    "uint8 images (B,3,S,S) as MMSeg's data preprocessor takes them, and labels (B,S,S) in [0, 150)."
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (a.batch, 3, a.size, a.size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (a.batch, a.size, a.size), generator=g)
    return imgs, labels


def normalise(imgs):
    "What MMSeg's SegDataPreProcessor does (bgr_to_rgb, mean/std), done once beforehand for the segnb rows."
    x = imgs.flip(1).float()
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _faults():
    "Minor page faults of this process so far (fresh memory from the kernel: zeroed pages cost CPU time)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def n_params(module, skip_prefix=None):
    return sum(p.numel() for n, p in module.named_parameters() if not (skip_prefix and n.startswith(skip_prefix)))


# ----------------------------------------------------------------------------------------------- MMSeg (worker side)
def worker_main(a):
    "Build MMSeg's model, then answer `step <seed>` with the time of one `model.train_step` (JSON lines on stdout)."
    torch.set_num_threads(a.threads)
    ops = stub_mmcv_ext()
    import logging
    import mmseg, mmcv, mmengine
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.optim import OptimWrapper
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    with contextlib.suppress(Exception):
        lg = MMLogger.get_current_instance(); lg.setLevel(logging.ERROR)
        for h in lg.handlers: h.setLevel(logging.ERROR)
    cfg = Config.fromfile(str(Path(mmseg.__file__).parent / ".mim" / "configs" / MMSEG_CFG))
    mcfg = strip_mmseg_cfg(cfg.model.to_dict())
    d = torch.load(a.data, weights_only=True)
    imgs, labels = d["imgs"], d["labels"]
    h, w = imgs.shape[2:]
    mcfg["data_preprocessor"]["size"] = (h, w)   # the config pads to its 512x512 crop; pad to the benchmark size instead
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = MODELS.build(mcfg); model.init_weights()
    model.train()
    samples = []
    for i in range(imgs.shape[0]):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=labels[i][None].clone())
        samples.append(s)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD))
    print(json.dumps(dict(ready=dict(params=n_params(model, "auxiliary_head"), params_aux=n_params(model) - n_params(model, "auxiliary_head"),
                                     versions=dict(mmseg=mmseg.__version__, mmcv=mmcv.__version__, mmengine=mmengine.__version__,
                                                   torch=torch.__version__), mmcv_ops=ops,
                                     threads=torch.get_num_threads()))), flush=True)
    control = _control_row(imgs, labels) if a.control else None
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit": break
        if cmd[0] == "step":
            data = dict(inputs=[im.clone() for im in imgs], data_samples=copy.deepcopy(samples))   # untimed, like data loading
            torch.manual_seed(int(cmd[1]))
            t0, c0, f0 = time.perf_counter(), time.process_time(), _faults()
            logs = model.train_step(data, optim)
            ms, cpu = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
            print(json.dumps(dict(ms=ms, cpu=cpu, faults=_faults() - f0, loss=float(logs["loss"]))), flush=True)
        if cmd[0] == "control":
            ms = control.step(int(cmd[1]))
            print(json.dumps(dict(ms=ms, cpu=control.cpu[-1], faults=control.faults[-1], loss=control.losses[-1])), flush=True)


def _control_row(imgs, labels):
    "segnb's plain loop inside this (peers) process: segnb and its dependencies from the checkout's .venv, torch from here."
    import glob
    sys.path.insert(0, str(ROOT)); sys.path += glob.glob(str(ROOT / ".venv/lib/python3*/site-packages"))
    from segnb.config import Config
    from segnb.registry import MODELS
    torch.manual_seed(0)   # the same initial weights as the main process's segnb rows
    return PlainRow(MODELS.build(Config.fromfile(SEGNB_CFG).model), normalise(imgs), labels)


class MMSegRow:
    "(c) the MMSeg worker process, stepped over a pipe."
    name, framework, variant = "mmseg", "mmseg", "fp32 train_step"

    def __init__(self, a, data_path, reuse_memory=False):
        args = [a.peers_python, str(Path(__file__).resolve()), "--worker", "--threads", str(a.threads), "--data", str(data_path)]
        if a.control and not reuse_memory: args.append("--control")
        env = {k: v for k, v in os.environ.items() if k not in REUSE_ENV}
        env.update({"OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": ""})
        if reuse_memory:
            env.update(REUSE_ENV)
            self.variant = "fp32 train_step, reuse memory"
        self.log = tempfile.TemporaryFile("w+")   # a file, not a pipe: a chatty worker cannot block on a full pipe
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
                                  cwd=str(Path(__file__).resolve().parent))
        line = self.p.stdout.readline()
        if not line: raise RuntimeError(f"MMSeg worker ({a.peers_python}) exited: {self.stderr()}")
        info = json.loads(line)["ready"]
        self.params, self.params_aux, self.info = info["params"], info["params_aux"], info
        self.framework = f"mmseg {info['versions']['mmseg']}"
        self.ms, self.cpu, self.faults, self.losses, self.cmd = [], [], [], [], "step"

    def control_row(self):
        "The worker's segnb plain-loop row (--control), stepped over the same pipe."
        c = copy.copy(self)
        c.framework, c.variant, c.ms, c.cpu, c.faults, c.losses, c.cmd = "segnb (plain, peers proc)", "fp32 control", [], [], [], [], "control"
        return c

    def step(self, seed):
        self.p.stdin.write(f"{self.cmd} {seed}\n"); self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line: raise RuntimeError(f"MMSeg worker died: {self.stderr()}")
        r = json.loads(line)
        self.losses.append(r["loss"]); self.ms.append(r["ms"]); self.cpu.append(r["cpu"]); self.faults.append(r["faults"])
        return r["ms"]

    def stderr(self):
        self.log.seek(0)
        return self.log.read()[-3000:]

    def close(self):
        with contextlib.suppress(Exception):
            self.p.stdin.write("quit\n"); self.p.stdin.flush(); self.p.wait(timeout=60)


# ------------------------------------------------------------------------------------------------------ segnb rows
class PlainRow:
    "(b) a plain PyTorch loop over segnb's model: zero_grad, forward, `model.loss`, backward, SGD step."
    framework = "segnb (plain loop)"

    def __init__(self, model, x, y, bf16=False):
        self.model, self.x, self.y, self.bf16 = model.train(), x, y, bf16
        self.variant = "bf16 autocast" if bf16 else "fp32"
        self.opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        self.params, self.params_aux = n_params(model, "auxiliary_head"), n_params(model) - n_params(model, "auxiliary_head")
        self.ms, self.cpu, self.faults, self.losses = [], [], [], []

    def step(self, seed):
        torch.manual_seed(seed)
        t0, c0, f0 = time.perf_counter(), time.process_time(), _faults()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            preds = self.model(self.x)
            if self.bf16: preds = tuple(p.float() for p in preds)   # as fastai's MixedPrecision.after_pred does
            loss = self.model.loss(preds, self.y)
        loss.backward()
        self.opt.step()
        ms = (time.perf_counter() - t0) * 1e3
        self.cpu.append((time.process_time() - c0) * 1e3); self.faults.append(_faults() - f0)
        self.losses.append(float(loss.detach())); self.ms.append(ms)
        return ms


class LearnerRow:
    """(a) segnb through the fastai Learner. `learn.fit_iters` runs in its own thread, paused after every iteration
    (in the last `after_batch` callback) until the driver asks for the next one, so the Learner is timed inside one
    uninterrupted fit while the rows still take turns."""
    framework = "segnb (Learner)"

    def __init__(self, learn, n_steps, threads, bf16=False):
        from fastai.callback.core import Callback, CancelValidException
        row = self
        self.learn, self.n_steps, self.threads = learn, n_steps, threads
        self.variant = "bf16 (enable_amp)" if bf16 else "fp32"
        m = learn.model
        self.params, self.params_aux = n_params(m, "auxiliary_head"), n_params(m) - n_params(m, "auxiliary_head")
        self.ms, self.cpu, self.faults, self.losses, self.autocast_seen = [], [], [], [], []
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.seed, self.err, self.finished = 0, None, False

        class _Start(Callback):
            order = -10**6   # before every other callback's before_batch
            def before_batch(self):
                if not self.training: return
                torch.manual_seed(row.seed)
                row.t0, row.c0, row.f0 = time.perf_counter(), time.process_time(), _faults()

        class _SeeAutocast(Callback):
            order = 5        # after MixedPrecision.before_batch opened autocast (order 10 runs later in after_pred)
            def after_pred(self):
                p = self.pred[0] if isinstance(self.pred, (tuple, list)) else self.pred
                row.autocast_seen.append((str(p.dtype), torch.is_autocast_enabled("cpu")))

        class _End(Callback):
            order = 10**6    # after every other callback's after_batch
            def after_batch(self):
                if not self.training: return
                row.ms.append((time.perf_counter() - row.t0) * 1e3); row.cpu.append((time.process_time() - row.c0) * 1e3)
                row.faults.append(_faults() - row.f0)
                row.losses.append(float(self.learn.loss.detach()))
                if len(row.ms) < row.n_steps:   # the last iteration returns only when fit has finished (see _run)
                    row.done.release(); row.go.acquire()

        class _NoValidation(Callback):
            def before_validate(self): raise CancelValidException()

        self.cbs = [_Start(), _SeeAutocast(), _End(), _NoValidation()]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        torch.set_num_threads(self.threads)   # OpenMP settings are per thread
        self.go.acquire()
        try:
            with self.learn.no_bar(), self.learn.no_logging():
                self.learn.fit_iters(self.n_steps, self.n_steps, cbs=self.cbs)
        except BaseException as e:  # noqa: BLE001
            self.err = e
        finally:
            self.finished = True
            self.done.release()

    def step(self, seed):
        if self.finished: raise RuntimeError(f"{self.framework} {self.variant}: fit already ended ({self.err!r})")
        self.seed = seed
        n = len(self.ms)
        self.go.release(); self.done.acquire()
        if self.err is not None: raise RuntimeError(f"{self.framework} {self.variant} failed: {self.err!r}") from self.err
        if len(self.ms) != n + 1: raise RuntimeError(f"{self.framework} {self.variant}: fit stopped after {len(self.ms)} iterations")
        return self.ms[-1]


def memory_dls(x, y, bs):
    "fastai DataLoaders over pre-made tensors (as TensorImage/TensorMask, the types segnb's data pipeline yields)."
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.vision.core import TensorImage, TensorMask
    items = [(TensorImage(x[i]), TensorMask(y[i])) for i in range(len(x))]
    return DataLoaders(DataLoader(items, bs=bs, shuffle=False, drop_last=False), DataLoader(items, bs=bs, shuffle=False))


def segnb_learner(x, y, state, n_steps, work_dir, amp, winograd=False):
    "`learner_from_config` on the model-zoo config with in-memory data; weights from `state`; only the schedule's first iterations run."
    from segnb.config import Config
    from segnb.train import learner_from_config
    from segnb.callbacks import ParamSchedulerCallback
    cfg = Config.fromfile(SEGNB_CFG)
    max_iters = int(cfg.schedule.max_iters)
    # no checkpoint file at the end of each short fit (a real run writes one every 8000 iterations); the logger stays
    cfg.callbacks = [dict(type="CheckpointCallback", interval=int(cfg.schedule.val_interval), save_last=False),
                     dict(type="LoggerCallback", interval=50)] + ([dict(type="WinogradCallback")] if winograd else [])
    learn = learner_from_config(cfg, work_dir=work_dir, amp=amp, dls=memory_dls(x, y, len(x)))
    learn.model.load_state_dict(state)
    for cb in learn.cbs:   # the learning rates of the first iterations of the config's 80k-iteration poly schedule
        if isinstance(cb, ParamSchedulerCallback): cb.total_iters = max_iters
    return learn


# ------------------------------------------------------------------------------------------------- bf16 curve check
def curve_check(a, out_png):
    "fp32 vs bf16 (enable_amp) loss curves of a small model through the Learner, same seed; returns a dict of numbers."
    from fastai.callback.core import Callback
    from segnb.data.synthetic import synthetic_scenes
    from segnb.data.core import seg_dataloaders
    from segnb.learner import seg_learner
    from segnb.train import set_random_seed, enable_amp
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_curve_"))
    root = synthetic_scenes(64, size=128, seed=0, root=tmp / "scenes")
    res = {}

    class _Losses(Callback):
        order = 10**6
        def before_fit(self): self.raw = []
        def after_batch(self):
            if self.training: self.raw.append(float(self.learn.loss.detach()))

    class _Seen(Callback):
        order = 5    # before MixedPrecision.after_pred (order 10) turns the logits back to float
        def before_fit(self): self.seen = []
        def after_pred(self):
            if self.training and not self.seen:
                p = self.pred[0] if isinstance(self.pred, (tuple, list)) else self.pred
                self.seen.append((str(p.dtype), torch.is_autocast_enabled("cpu")))

    for mode in ("fp32", "bf16"):
        set_random_seed(0)
        dls = seg_dataloaders(root, bs=8, seed=0)
        learn = seg_learner(dls, "deeplabv3plus", backbone="resnet18", output_stride=16, path=tmp / mode)
        if mode == "bf16": enable_amp(learn)
        rec, seen = _Losses(), _Seen()
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            learn.fit_iters(a.curve_steps, a.curve_steps, lr=1e-2, seed=0, cbs=[rec, seen])
            secs = time.perf_counter() - t0
            miou = float(learn.validate_metrics()["mIoU"])
        res[mode] = dict(raw=rec.raw, autocast=seen.seen[0], secs=secs, mIoU=miou)
        print(f"# curve check {mode}: {a.curve_steps} iterations in {secs:.0f} s, last loss {rec.raw[-1]:.4f}, val mIoU {miou:.2f}", flush=True)
    import numpy as np

    def smooth(v, beta=0.9):   # debiased EMA, as fastai's smooth loss (beta 0.98 there)
        out, m = [], 0.0
        for i, x in enumerate(v):
            m = beta * m + (1 - beta) * x
            out.append(m / (1 - beta ** (i + 1)))
        return np.array(out)

    f, b = smooth(res["fp32"]["raw"]), smooth(res["bf16"]["raw"])
    rel = np.abs(b - f) / np.abs(f)
    out = dict(steps=a.curve_steps, max_rel=float(rel.max()), mean_rel=float(rel.mean()),
               final_fp32=float(f[-1]), final_bf16=float(b[-1]), final_rel=float(rel[-1]),
               first_fp32=res["fp32"]["raw"][0], first_bf16=res["bf16"]["raw"][0],
               raw_final_fp32=res["fp32"]["raw"][-1], raw_final_bf16=res["bf16"]["raw"][-1],
               autocast_fp32=res["fp32"]["autocast"], autocast_bf16=res["bf16"]["autocast"],
               mIoU_fp32=res["fp32"]["mIoU"], mIoU_bf16=res["bf16"]["mIoU"],
               secs_fp32=res["fp32"]["secs"], secs_bf16=res["bf16"]["secs"],
               raw_fp32=res["fp32"]["raw"], raw_bf16=res["bf16"]["raw"])
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.5))
    it = np.arange(1, len(f) + 1)
    ax.plot(it, res["fp32"]["raw"], color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(it, res["bf16"]["raw"], color="tab:orange", alpha=0.25, lw=0.8)
    ax.plot(it, f, color="tab:blue", label=f"fp32 (val mIoU {out['mIoU_fp32']:.1f})")
    ax.plot(it, b, color="tab:orange", ls="--", label=f"bf16 autocast (val mIoU {out['mIoU_bf16']:.1f})")
    ax.set_xlabel("iteration"); ax.set_ylabel("training loss (model.loss)")
    ax.set_title(f"DeepLabV3+ resnet18 OS16, synthetic 128x128, bs 8: fp32 vs bf16 (max rel. diff of smoothed {out['max_rel']:.1%})",
                 fontsize=9)
    ax.legend(); fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90); plt.close(fig)
    import shutil; shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------------- main
def cpu_name():
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main():
    a = parse_args()
    if a.worker: return worker_main(a)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(ROOT))
    lines = []
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    def say(s=""):
        print(s, flush=True); lines.append(s)
        Path(a.out).write_text("\n".join(lines) + "\n")   # also what a run cut short had reached
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    say("# bench_train.py: one training step of DeepLabV3+ R50-D8 (+ aux FCN head), segnb vs MMSegmentation, CPU")
    say(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  host cpu: {cpu_name()}  os.cpu_count={os.cpu_count()}  "
        f"torch threads={a.threads}  OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}  load average at start: {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}")
    import fastai, segnb
    say(f"# versions: python={platform.python_version()}, torch={torch.__version__}, fastai={fastai.__version__}, "
        f"segnb={getattr(segnb, '__version__', '?')}")
    rows = [] if a.curve_only else time_rows(a, say, t_start, load0)
    curve = None
    if a.amp and not a.no_curve:
        t0 = time.perf_counter()
        png = RESULTS / ("bench_train_bf16_curve_quick.png" if a.quick else "bench_train_bf16_curve.png")
        curve = curve_check(a, png)
        say()
        say(f"bf16 loss-curve check ({curve['steps']} iterations through the Learner, DeepLabV3+ on timm resnet18 (output stride 16), 64 synthetic "
            f"scenes 128x128, bs 8, SGD lr 0.01, same seed; {time.perf_counter() - t0:.0f} s):")
        say(f"  autocast seen in the forward: fp32 run {curve['autocast_fp32']}, bf16 run {curve['autocast_bf16']} (pred dtype, cpu autocast on)")
        say(f"  smoothed loss (debiased EMA, beta 0.9): max rel. diff {curve['max_rel']:.2%}, mean rel. diff {curve['mean_rel']:.2%}, "
            f"final {curve['final_fp32']:.4f} (fp32) vs {curve['final_bf16']:.4f} (bf16), rel. diff {curve['final_rel']:.2%}")
        say(f"  raw loss: first {curve['first_fp32']:.4f} vs {curve['first_bf16']:.4f}, last {curve['raw_final_fp32']:.4f} vs "
            f"{curve['raw_final_bf16']:.4f}; val mIoU after training {curve['mIoU_fp32']:.2f} (fp32) vs {curve['mIoU_bf16']:.2f} (bf16)")
        say(f"  fit time: fp32 {curve['secs_fp32']:.0f} s, bf16 {curve['secs_bf16']:.0f} s; plot: {png.relative_to(ROOT)}")
    say(f"\ntotal wall time: {time.perf_counter() - t_start:.0f} s")
    print(f"# written: {a.out}")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(args={k: v for k, v in vars(a).items()}, rows=[
            dict(framework=r.framework, variant=r.variant, ms=getattr(r, "ms_timed", []), all_ms=list(r.ms), cpu_ms=list(r.cpu),
                 losses=r.losses, params=r.params, params_aux=r.params_aux) for r in rows], curve=curve), indent=1))


def time_rows(a, say, t_start, load0):
    "Build every row, run the round-robin rounds, print the table; returns the rows."
    say(f"# input: batch {a.batch} x 3 x {a.size} x {a.size} random, {NUM_CLASSES} classes; SGD lr {LR} momentum {MOMENTUM} "
        f"wd {WD}; {a.warmup} warm-up round(s) + {a.runs} timed round(s), round-robin over rows")
    imgs, labels = make_data(a)
    x = normalise(imgs)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data_path = work / "data.pt"
    torch.save(dict(imgs=imgs, labels=labels), data_path)

    from segnb.config import Config
    from segnb.registry import MODELS
    from segnb.cpu_memory import reuse_cpu_memory
    # what SegLearner.fit does on CPU; done here, before the Learner rows' threads exist, so that they share the main heap
    # (in `segnb train` the fit runs on the main thread)
    reuse_cpu_memory()
    torch.manual_seed(0)
    state = MODELS.build(Config.fromfile(SEGNB_CFG).model).state_dict()
    n_steps = a.warmup + a.runs
    rows = [LearnerRow(segnb_learner(x, labels, state, n_steps, work / "fp32", amp=False), n_steps, a.threads)]
    if not a.no_winograd:
        rows.append(LearnerRow(segnb_learner(x, labels, state, n_steps, work / "wino", amp=False, winograd=True), n_steps, a.threads))
        rows[-1].variant = "fp32 + Winograd"
    plain_model = MODELS.build(Config.fromfile(SEGNB_CFG).model); plain_model.load_state_dict(state)
    rows.append(PlainRow(plain_model, x, labels))
    if a.amp:
        rows.append(LearnerRow(segnb_learner(x, labels, state, n_steps, work / "bf16", amp=True), n_steps, a.threads, bf16=True))
        m16 = MODELS.build(Config.fromfile(SEGNB_CFG).model); m16.load_state_dict(state)
        rows.append(PlainRow(m16, x, labels, bf16=True))
    mm, mm_note = None, None
    if not a.skip_mmseg:
        if not Path(a.peers_python).exists(): mm_note = f"MMSeg skipped: peers python {a.peers_python} not found"
        else:
            try:
                mm = MMSegRow(a, data_path, reuse_memory=a.peers_reuse == "only"); rows.append(mm)
                if a.control: rows.append(mm.control_row())
                if a.peers_reuse == "both": rows.append(MMSegRow(a, data_path, reuse_memory=True))
                say(f"# MMSeg worker: {', '.join(f'{k}={v}' for k, v in mm.info['versions'].items())}; mmcv: {mm.info['mmcv_ops']}; "
                    f"threads={mm.info['threads']}")
            except Exception as e:  # noqa: BLE001
                mm_note = f"MMSeg skipped: {type(e).__name__}: {e}"[:600]
    if mm_note: say(f"# {mm_note}")
    say(f"# built in {time.perf_counter() - t_start:.0f} s; {len(rows)} rows")

    try:
        for r in range(n_steps):
            t0 = time.perf_counter()
            seed = 1000 + r
            if r == 0:
                for row in rows: row.ms_timed = []
            for row in rows:
                ms = row.step(seed)
                if r >= a.warmup: row.ms_timed.append(ms)
            print(f"# round {r + 1}/{n_steps}{' (warm-up)' if r < a.warmup else ''}: {time.perf_counter() - t0:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f}: " + ", ".join(f"{row.framework} {row.variant} {row.ms[r]:.0f} ms (cpu {row.cpu[r]:.0f}, {row.faults[r]} faults)" for row in rows),
                  flush=True)
    finally:
        for r in rows:
            if isinstance(r, MMSegRow) and r.cmd == "step": r.close()
    for row in rows:
        if isinstance(row, LearnerRow): row.thread.join(timeout=120)
    report(a, rows, mm, say, load0, os.getloadavg())
    import shutil; shutil.rmtree(work, ignore_errors=True)
    return rows


def report(a, rows, mm, say, load0, load1):
    med = {id(r): statistics.median(r.ms_timed) for r in rows}
    cmed = {id(r): statistics.median(r.cpu[a.warmup:]) for r in rows}
    mmr = next((r for r in rows if isinstance(r, MMSegRow) and r.variant.endswith("reuse memory")), None)
    if mm is mmr: mm = None                  # --peers-reuse only: no as-shipped MMSeg row
    mm_med = med[id(mm)] if mm is not None else None
    say()
    hdr = (f"{'framework':<20} {'variant':<30} {'params(M)':>11} {'ms/step med':>11} {'min':>8} {'max':>8} {'n':>2} "
           f"{'x MMSeg':>7} {'x MMSeg reuse':>13} {'overhead':>8} {'cpu ms med':>10} {'x MMSeg':>7}")
    say(hdr); say("-" * len(hdr))
    plain = {r.variant.split()[0]: r for r in rows if isinstance(r, PlainRow)}
    for r in rows:
        ts = r.ms_timed
        p = f"{r.params / 1e6:.2f}+{r.params_aux / 1e6:.2f}"
        speed = f"{mm_med / med[id(r)]:7.2f}" if mm_med else "      -"
        ov = "       -"
        if isinstance(r, LearnerRow):
            pr = plain.get(r.variant.split()[0])
            if pr is not None: ov = f"{100 * (med[id(r)] / med[id(pr)] - 1):+7.1f}%"
        cspeed = f"{cmed[id(mm)] / cmed[id(r)]:7.2f}" if mm_med else "      -"
        rspeed = f"{med[id(mmr)] / med[id(r)]:13.2f}" if mmr is not None else f"{'-':>13}"
        say(f"{r.framework:<20} {r.variant:<30} {p:>11} {med[id(r)]:11.1f} {min(ts):8.1f} {max(ts):8.1f} {len(ts):2d} {speed} {rspeed} {ov} "
            f"{cmed[id(r)]:10.1f} {cspeed}")
    say(f"x MMSeg = MMSeg's median ms/step / the row's (higher = faster than MMSeg; target for segnb fp32: >= 1.3); "
        f"x MMSeg reuse: the same against the MMSeg worker started with segnb's malloc settings "
        f"({' '.join(f'{k}={v}' for k, v in REUSE_ENV.items())}; SegLearner.fit sets them with reuse_cpu_memory() on CPU, "
        f"for every segnb row of this process). fp32 + Winograd: the Learner with WinogradCallback. "
        f"overhead = Learner row / plain-loop row of the same precision - 1 (target <= 5%).")
    say(f"params(M) = model + auxiliary FCN head (MMSeg's DeepLabV3+ R50-D8: 41.29 + 2.40).")
    say("segnb (Learner) = learner_from_config(the model-zoo YAML) + learn.fit_iters, timed from the first before_batch to the "
        "last after_batch callback (data loading excluded); segnb (plain loop) = zero_grad, forward, model.loss, backward, "
        "torch SGD step; MMSeg = model.train_step(data, OptimWrapper(SGD)) incl. its data preprocessor (normalisation of "
        "the uint8 batch; the segnb rows get it pre-normalised). Rows alternate round-robin, one step at a time.")
    # the Learner runs the same computation as the plain loop: same weights, data and dropout seed -> same losses
    for v, pr in plain.items():
        lr_ = next((r for r in rows if isinstance(r, LearnerRow) and r.variant.split()[0] == v), None)
        if lr_ is None: continue
        d = max(abs(p - q) / max(abs(q), 1e-12) for p, q in zip(lr_.losses, pr.losses))
        say(f"losses {v}: Learner {', '.join(f'{l:.4f}' for l in lr_.losses)} | plain {', '.join(f'{l:.4f}' for l in pr.losses)} "
            f"(max rel. diff {d:.1e}; the Learner's lr follows PolyLR over 80k iterations, the plain loop keeps {LR})")
        if lr_.autocast_seen:
            say(f"  Learner {lr_.variant}: decode logits dtype / cpu autocast on, first iteration: {lr_.autocast_seen[0]}")
    for r in rows:
        if isinstance(r, MMSegRow) and r.cmd == "step": say(f"losses {r.framework} {r.variant}: {', '.join(f'{l:.4f}' for l in r.losses)} (its own random init)")
    say(f"load average: {load0[0]:.1f} at start, {load1[0]:.1f} at the end of the timed rounds "
        f"({os.cpu_count()} cores; the ratios are from the same rounds, the absolute ms depend on the load)")


if __name__ == "__main__":
    main()
