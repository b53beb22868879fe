"""Exact resume after SIGKILL, atomic checkpoint writes, and the NaN guard (segnb.callbacks).

This file is also the training script the SIGKILL test runs in subprocesses:
    python tests/test_resume.py WORK_DIR OUT.pt [--slow SECONDS] [--resume]
"""
import os, random, re, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

MAX_ITERS, VAL_INTERVAL, CKPT_INTERVAL = 30, 7, 3

class AugSet:
    "Random images/masks with augmentations drawing from the torch, NumPy and Python generators."
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n, 8, 8), generator=g)
    def __len__(self): return len(self.x)
    def __getitem__(self, i):
        x, y = self.x[i].clone(), self.y[i].clone()
        if torch.rand(()) < 0.5: x, y = x.flip(-1), y.flip(-1)
        x = x * (1 + 0.1 * float(np.random.randn())) + 0.05 * random.random()
        return x, y

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2))
        self.head = nn.Conv2d(8, 3, 1)
    def forward(self, x): return self.head(self.backbone(x))
    def loss(self, pred, y):
        ce, reg = F.cross_entropy(pred, y), 0.01 * pred.pow(2).mean()
        self.last_losses = {"loss_ce": ce.item(), "loss_reg": reg.item()}
        return ce + reg

def build(work_dir, extra_cbs=(), interval=CKPT_INTERVAL, max_keep=4):
    "A deterministic learner: shuffled loader, augmentations, dropout, SGD+momentum with paramwise settings, warm-up + PolyLR, EMA."
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from segnb.callbacks import (ParamSchedulerCallback, CheckpointCallback, EMACallback, EarlyStoppingCallback,
                                 NaNGuardCallback, IterBasedTrainLoop)
    from segnb.optim import build_optimizer
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    random.seed(0); np.random.seed(0); torch.manual_seed(0)
    dls = DataLoaders.from_dsets(AugSet(40, 1), AugSet(8, 2), bs=4, num_workers=0, device="cpu")
    model = Net()
    opt = build_optimizer(model, dict(type="OptimWrapper",
                                      optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=1e-3),
                                      paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={"head": dict(lr_mult=2.0)})))
    cbs = [IterBasedTrainLoop(MAX_ITERS, VAL_INTERVAL, seed=123),
           ParamSchedulerCallback([dict(type="LinearLR", start_factor=0.1, begin=0, end=4),
                                   dict(type="PolyLR", power=0.9, eta_min=1e-4, begin=4)]),
           CheckpointCallback(interval=interval, out_dir=Path(work_dir) / "ckpt", max_keep_ckpts=max_keep, save_best="valid_loss"),
           EMACallback(momentum=0.3), EarlyStoppingCallback(monitor="valid_loss", patience=100), NaNGuardCallback(), *extra_cbs]
    return Learner(dls, model, loss_func=model.loss, opt_func=opt, lr=0.05, path=work_dir, cbs=cbs)

def final_state(learn):
    return {"model": {k: v.clone() for k, v in learn.model.state_dict().items()},
            "ema": {k: v.clone() for k, v in learn.ema.shadow.items()}}

def assert_identical(a, b):
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"

def run(work_dir, resume=False, slow=0.0, max_keep=4):
    from fastai.callback.core import Callback
    class Slow(Callback):
        order = 100
        def after_batch(self): time.sleep(slow)
    learn = build(work_dir, extra_cbs=[Slow()] if slow else [], max_keep=max_keep)
    with learn.no_bar(), learn.no_logging():
        learn.fit_iters(MAX_ITERS, VAL_INTERVAL, resume_from=Path(work_dir) / "ckpt" if resume else None)
    return learn

@pytest.fixture
def deterministic():
    old = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    yield
    torch.use_deterministic_algorithms(old[0]); torch.set_num_threads(old[1])

def _worker(cmd, env=None):
    return subprocess.Popen([sys.executable, __file__, *map(str, cmd)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})

def test_sigkill_then_resume_is_bit_identical(tmp_path):
    procs = []
    try: _sigkill_then_resume(tmp_path, procs)
    finally:
        for p in procs:  # never leave a worker behind when an assertion fails
            if p.poll() is None: p.kill(); p.wait()

def _sigkill_then_resume(tmp_path, procs):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _worker([ref_dir, tmp_path / "ref.pt"])                  # uninterrupted, in parallel with the run we kill
    victim = _worker([run_dir, tmp_path / "killed.pt", "--slow", 0.15])
    procs += [ref, victim]
    ptr, deadline = run_dir / "ckpt" / "last_checkpoint", time.time() + 300  # generous: CI machines can be loaded
    seen = None
    while time.time() < deadline and victim.poll() is None:
        if ptr.exists():
            m = re.search(r"iter_(\d+)", ptr.read_text())
            if m and int(m.group(1)) >= 3 * CKPT_INTERVAL:
                seen = int(m.group(1)); break
        time.sleep(0.01)
    assert seen is not None, f"no checkpoint appeared in time; worker output:\n{victim.communicate()[0] if victim.poll() is not None else ''}"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.pt").exists(), "the run finished before it was killed"
    resumed = _worker([run_dir, tmp_path / "resumed.pt", "--resume"])
    procs.append(resumed)
    out = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, out
    start = int(re.search(r"resumed from .* at iteration (\d+)", out).group(1))
    # the newest checkpoint: periodic (every 3) or best-after-validation (every 7)
    assert seen <= start < MAX_ITERS and (start % CKPT_INTERVAL == 0 or start % VAL_INTERVAL == 0), (seen, start, out)
    ref_out = ref.communicate(timeout=400)[0]
    assert ref.returncode == 0, ref_out
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    assert_identical(a, b)
    assert a["iters"] == b["iters"] == MAX_ITERS

def test_resume_in_process_and_each_piece_of_state_matters(tmp_path, deterministic):
    from segnb.callbacks import load_checkpoint
    full = run(tmp_path / "a", max_keep=-1)
    ref = final_state(full)
    ck_path = tmp_path / "a" / "ckpt" / "iter_15.pth"
    ck = load_checkpoint(ck_path)
    assert ck["meta"]["iter"] == 15 and ck["callbacks"]["iter_loop"]["loader"]["epoch"] == 1  # mid-round, mid-pass
    # the checkpoint alone reproduces the rest of the run
    learn = build(tmp_path / "b")
    with learn.no_bar(), learn.no_logging(): learn.fit_iters(MAX_ITERS, VAL_INTERVAL, resume_from=ck_path)
    assert_identical(ref, final_state(learn))
    # the same through resume(learn, work_dir): the latest checkpoint there is the last one (iteration 30)
    from segnb.callbacks import resume
    learn = build(tmp_path / "c")
    meta = resume(learn, tmp_path / "a" / "ckpt")
    assert meta["iter"] == MAX_ITERS and meta["path"].endswith("iter_30.pth")
    with learn.no_bar(), learn.no_logging(): learn.fit_iters(MAX_ITERS, VAL_INTERVAL)
    assert_identical(ref, final_state(learn)) and not any(type(cb).__name__ == "ResumeCallback" for cb in learn.cbs)
    # ... and leaving out any piece of it changes the result, so the test above can fail
    def drop_rng(c): c["rng"] = None
    def drop_opt(c): c["optimizer"] = None
    def move_loader(c): c["callbacks"]["iter_loop"]["loader"]["index"] = 0
    def drop_sched(c): del c["callbacks"]["param_scheduler"]
    def drop_ema(c): del c["callbacks"]["ema"]
    for spoil in (drop_rng, drop_opt, move_loader, drop_sched, drop_ema):
        c = load_checkpoint(tmp_path / "a" / "ckpt" / "iter_24.pth"); spoil(c)
        torch.save(c, tmp_path / "spoiled.pth")
        learn = build(tmp_path / spoil.__name__)
        with pytest.warns(UserWarning) if spoil in (drop_rng, drop_opt) else _nullcontext():
            with learn.no_bar(), learn.no_logging(): learn.fit_iters(MAX_ITERS, VAL_INTERVAL, resume_from=tmp_path / "spoiled.pth")
        with pytest.raises(AssertionError): assert_identical(ref, final_state(learn))

class _nullcontext:
    def __enter__(self): return self
    def __exit__(self, *a): return False

def test_epoch_based_resume_is_exact(tmp_path, deterministic):
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import SGD
    from functools import partial
    from segnb.callbacks import CheckpointCallback, ResumeCallback, ParamSchedulerCallback
    def make(d):
        random.seed(0); np.random.seed(0); torch.manual_seed(0); torch.use_deterministic_algorithms(True)
        dls = DataLoaders.from_dsets(AugSet(24, 1), AugSet(8, 2), bs=4, num_workers=0, device="cpu")
        m = Net()
        return Learner(dls, m, loss_func=m.loss, opt_func=partial(SGD, mom=0.9), lr=0.05, path=d,
                       cbs=[CheckpointCallback(interval=1, by_epoch=True, out_dir=Path(d) / "ckpt"),
                            ParamSchedulerCallback(dict(type="StepLR", step_size=2, gamma=0.5, by_epoch=True))])
    a = make(tmp_path / "a")
    with a.no_bar(), a.no_logging(): a.fit(4)
    assert sorted(p.name for p in (tmp_path / "a" / "ckpt").glob("*.pth")) == [f"epoch_{i}.pth" for i in range(1, 5)]
    b = make(tmp_path / "b")
    with b.no_bar(), b.no_logging(): b.fit(4, cbs=ResumeCallback(tmp_path / "a" / "ckpt" / "epoch_2.pth"))
    for k, v in a.model.state_dict().items(): assert torch.equal(v, b.model.state_dict()[k]), k
    assert b.train_iter == a.train_iter == 24 and b.epoch == 3

def test_atomic_write_survives_a_crash_mid_save(tmp_path, monkeypatch, deterministic):
    from segnb.callbacks import load_checkpoint, find_latest_checkpoint, atomic_save
    learn = build(tmp_path, interval=2, max_keep=-1)
    real_save, calls = torch.save, {"n": 0}
    def crashing_save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # third checkpoint: write half of it, then "crash"
            import io
            buf = io.BytesIO(); real_save(obj, buf, *a, **kw)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *a, **kw)
    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        with learn.no_bar(), learn.no_logging(): learn.fit_iters(MAX_ITERS, VAL_INTERVAL)
    d = tmp_path / "ckpt"
    assert sorted(p.name for p in d.iterdir()) == ["iter_2.pth", "iter_4.pth", "last_checkpoint"]  # no iter_6, no temp file
    assert (d / "last_checkpoint").read_text() == "iter_4.pth" and find_latest_checkpoint(d) == d / "iter_4.pth"
    ck = load_checkpoint(d / "iter_4.pth")
    assert ck["meta"]["iter"] == 4 and ck["callbacks"]["checkpoint"]["kept"] == ["iter_2.pth", "iter_4.pth"]
    # overwriting an existing file: a failed write leaves the old content in place
    monkeypatch.setattr(torch, "save", real_save)
    before = (d / "iter_4.pth").read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (f.write(b"garbage"), (_ for _ in ()).throw(KeyboardInterrupt()))[0])
    with pytest.raises(KeyboardInterrupt): atomic_save({"x": 1}, d / "iter_4.pth")
    assert (d / "iter_4.pth").read_bytes() == before and not list(d.glob(".*.tmp"))
    # a torn file (what a non-atomic write would leave) is reported clearly
    (d / "torn.pth").write_bytes(before[: len(before) // 3])
    with pytest.raises(RuntimeError, match="truncated"): load_checkpoint(d / "torn.pth")

def test_stale_temp_files_are_ignored_and_cleaned(tmp_path, deterministic):
    from segnb.callbacks import find_latest_checkpoint
    d = tmp_path / "ckpt"; d.mkdir()
    (d / ".iter_9.pth.1234.tmp").write_bytes(b"partial")  # what a SIGKILL mid-write leaves
    assert find_latest_checkpoint(d) is None
    learn = build(tmp_path)
    with learn.no_bar(), learn.no_logging(): learn.fit_iters(7, 7)
    assert not list(d.glob(".*.tmp"))
    assert find_latest_checkpoint(d) == d / "iter_7.pth" and (d / "iter_6.pth").exists()

def test_nan_guard_stops_with_a_clear_message_and_keeps_checkpoints(tmp_path, deterministic):
    from fastai.callback.core import Callback
    from segnb.callbacks import NonFiniteLossError, load_checkpoint
    d, files = tmp_path / "ckpt", {}
    class PoisonLoss(Callback):  # iteration 9 (1-based) gets a NaN loss; snapshot the checkpoint folder just before
        order = 5
        def before_batch(self):
            if self.training and self.learn.train_iter == 8: files.update({p.name: p.read_bytes() for p in d.iterdir()})
        def after_pred(self):
            if self.training and self.learn.train_iter == 8: self.learn.pred = self.learn.pred * float("nan")
    learn = build(tmp_path, extra_cbs=[PoisonLoss()], interval=3)
    with pytest.raises(NonFiniteLossError) as e:
        with learn.no_bar(), learn.no_logging(): learn.fit_iters(MAX_ITERS, VAL_INTERVAL)
    msg, last = str(e.value), files["last_checkpoint"].decode()
    assert last == "best_valid_loss_iter_7.pth" and {"iter_3.pth", "iter_6.pth"} <= set(files)
    assert "iteration 9" in msg and "loss = nan" in msg and "loss_ce=nan" in msg and f"{last}, is untouched" in msg, msg
    assert {p.name: p.read_bytes() for p in d.iterdir()} == files  # nothing written, nothing removed
    # the model in memory holds the weights after iteration 8: finite, no update from the bad batch
    assert all(torch.isfinite(v).all() for v in learn.model.state_dict().values() if v.is_floating_point())
    assert load_checkpoint(d / last)["meta"]["iter"] == 7

def test_nan_guard_catches_gradients_and_can_stop_quietly(tmp_path, deterministic):
    from fastai.callback.core import Callback
    from segnb.callbacks import NaNGuardCallback
    class PoisonGrad(Callback):
        order = 15  # after backward, before the guard's before_step check
        def before_step(self):
            if self.learn.train_iter == 4: self.learn.model.head.weight.grad[0, 0] = float("inf")
    learn = build(tmp_path, extra_cbs=[PoisonGrad()])
    learn.nan_guard.action = "stop"
    w_before = {}
    class Snap(Callback):
        order = 14
        def before_step(self):
            if self.learn.train_iter == 4: w_before.update({k: v.clone() for k, v in self.learn.model.state_dict().items()})
    learn.add_cb(Snap())
    with learn.no_bar(), learn.no_logging(): learn.fit_iters(MAX_ITERS, VAL_INTERVAL)  # returns: action='stop'
    msg = learn.nan_guard.tripped
    assert msg and "iteration 5" in msg and "gradient of head.weight" in msg and "inf" in msg, msg
    assert learn.train_iter == 4
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, w_before[k]), k  # the bad step never happened
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pth")) == ["iter_3.pth"]  # no 'last' of a diverged run

if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("work_dir"); ap.add_argument("out")
    ap.add_argument("--slow", type=float, default=0.0); ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    learn = run(a.work_dir, resume=a.resume, slow=a.slow)
    torch.save({**final_state(learn), "iters": learn.train_iter}, a.out)
