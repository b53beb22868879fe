"Training callbacks, schedules and param-wise optimizers on a tiny generic fastai Learner (segnb.callbacks, segnb.optim)."
import json, math, random
from functools import partial
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner, Metric
from fastai.metrics import accuracy
from segnb.registry import CALLBACKS, SCHEDULERS, OPTIMIZERS
from segnb.callbacks import (IterBasedTrainLoop, InfiniteLoader, ParamSchedulerCallback, CheckpointCallback, EMACallback,
                             EarlyStoppingCallback, NaNGuardCallback, LoggerCallback, ResumeCallback, PolyLR, LinearLR,
                             load_checkpoint, load_weights, find_latest_checkpoint, infer_rule)
from segnb.optim import build_optimizer, ParamwiseOptimWrapper, paramwise_multipliers

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)
    def forward(self, x): return self.head(self.backbone(x))
    def loss(self, p, y):
        ce, aux = F.cross_entropy(p, y), 0.1 * p.abs().mean()
        self.last_losses = {"loss_ce": ce.item(), "loss_aux": aux.item()}
        return ce + aux

class IndexSet:
    "Item i is (image, mask) and remembers i in the image's first pixel, to follow the data order."
    def __init__(self, n): self.n = n
    def __len__(self): return self.n
    def __getitem__(self, i):
        x = torch.zeros(3, 4, 4); x[0, 0, 0] = i
        return x, torch.full((4, 4), i % 2, dtype=torch.long)

def learner(tmp_path, n_train=24, bs=4, opt=None, metrics=None, cbs=None, lr=0.05, seed=0):
    "`opt`: a function model -> optimizer wrapper (default: SGD with momentum through build_optimizer)."
    torch.manual_seed(seed); random.seed(seed); np.random.seed(seed)
    dls = DataLoaders.from_dsets(IndexSet(n_train), IndexSet(8), bs=bs, num_workers=0, device="cpu")
    model = Net()
    opt = (opt or (lambda m: build_optimizer(m, dict(type="SGD", lr=lr, momentum=0.9))))(model)
    return Learner(dls, model, loss_func=model.loss, opt_func=opt, lr=lr, path=tmp_path, metrics=metrics or [], cbs=cbs or [])

class FakeMIoU(Metric):
    "A metric column named mIoU whose values a `Script` callback writes."
    name = "mIoU"
    def reset(self): pass
    def accumulate(self, learn): pass
    @property
    def value(self): return 0.0

class Script(Callback):
    "Replaces the last column of each validation with the next scripted value."
    order = 55
    def __init__(self, vals): self.vals = iter(vals)
    def after_validate(self): self.recorder.log[-1] = next(self.vals)

class Spy(Callback):
    "Records training batches (item ids), the iteration of each validation, and the lr of every torch group."
    order = 90
    def __init__(self): self.ids, self.val_at, self.lrs, self.pcts = [], [], [], []
    def before_batch(self):
        if self.training:
            self.ids.append(self.learn.xb[0][:, 0, 0, 0].long().tolist())
            self.lrs.append([pg["lr"] for pg in self.learn.opt.opt.param_groups])
            self.pcts.append(self.learn.pct_train)
    def before_validate(self): self.val_at.append(self.learn.train_iter)

def quiet_fit(learn, *args, **kw):
    with learn.no_bar(), learn.no_logging(): getattr(learn, kw.pop("how", "fit_iters"))(*args, **kw)

# ---------------------------------------------------------------- iteration-based loop

def test_iter_loop_validates_at_the_right_iterations_and_cycles_the_data(tmp_path):
    spy = Spy()
    learn = learner(tmp_path, cbs=[spy])                      # 6 batches per pass over the data
    quiet_fit(learn, 20, 8, seed=7)                           # rounds of 8, 8, 4
    assert learn.train_iter == 20 and spy.val_at == [8, 16, 20]
    assert len(spy.ids) == 20
    passes = [sum(spy.ids[i:i + 6], []) for i in (0, 6, 12)]
    for p in passes: assert sorted(p) == list(range(24))     # each pass sees every sample once...
    assert passes[0] != passes[1] != passes[2]                # ...in a new order, continuing across rounds
    loader = InfiniteLoader(learn.dls.train, seed=7)
    assert passes[1] == loader.indices(1) and spy.ids[18] == loader.indices(3)[:4]
    rows = []
    learn = learner(tmp_path)
    with learn.no_bar():
        learn.logger = rows.append
        learn.fit_iters(10, 4)
    assert learn.recorder.metric_names[0] == "iter" and [r[0] for r in rows] == [4, 8, 10]  # the results' first column

def test_infinite_loader_restarts_mid_pass_exactly(tmp_path):
    learn = learner(tmp_path)
    a = InfiniteLoader(learn.dls.train, seed=3)
    first = [next(a)[0][:, 0, 0, 0].tolist() for _ in range(9)]  # into the second pass
    st = a.state_dict()
    assert (st["epoch"], st["index"]) == (1, 3)
    rest = [next(a)[0][:, 0, 0, 0].tolist() for _ in range(5)]
    b = InfiniteLoader(learn.dls.train, seed=0); b.load_state_dict(st)
    assert [next(b)[0][:, 0, 0, 0].tolist() for _ in range(5)] == rest
    other = learner(tmp_path, bs=3)
    with pytest.raises(ValueError, match="same data and batch size"): InfiniteLoader(other.dls.train).load_state_dict(st)
    assert first[6:] == [a.indices(1)[i * 4:(i + 1) * 4] for i in range(3)]

def test_iter_loop_progress_shows_iteration_and_eta(tmp_path):
    seen = []
    class Peek(Callback):
        order = 56  # right after the loop wrote the comment the bar renders at this batch's update
        def before_batch(self):
            if self.training: seen.append(self.learn.progress.pbar.comment)
    learn = learner(tmp_path, cbs=[Peek()])
    with learn.no_logging(): learn.fit_iters(10, 5)
    assert "iter 10/10" in seen[-1] and "ETA" in seen[-1] and seen[-1].split(" | ")[0].replace(".", "").isdigit()

def test_one_cycle_and_lr_find_with_every_callback(tmp_path):
    spy = Spy()
    cbs = [IterBasedTrainLoop(30, 10), CheckpointCallback(interval=5), EMACallback(momentum=0.5), NaNGuardCallback(),
           LoggerCallback(interval=5, out_dir=tmp_path / "logs"), spy]
    learn = learner(tmp_path, cbs=cbs)
    with learn.no_bar(), learn.no_logging():
        sug = learn.lr_find(num_it=12, show_plot=False)
    assert sug.valley > 0 and spy.val_at == []
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("*.pth"))  # lr_find saved nothing
    assert not (tmp_path / "logs").exists()
    spy.__init__()
    quiet_fit(learn, 1, 1e-2, how="fit_one_cycle")            # one-cycle over the 30 iterations of the loop
    assert len(spy.ids) == 30 and spy.val_at == [10, 20, 30]
    assert [round(p, 6) for p in spy.pcts] == [round(i / 30, 6) for i in range(30)]
    lrs = [l[0] for l in spy.lrs]
    assert max(lrs) == pytest.approx(1e-2, rel=0.05) and lrs[0] == pytest.approx(1e-2 / 25, rel=0.05) and lrs[-1] < 1e-4
    assert sorted(p.name for p in (tmp_path / "models").glob("*.pth")) == [f"iter_{i}.pth" for i in (10, 15, 20, 25, 30, 5)]

# ---------------------------------------------------------------- schedules

def test_poly_with_warmup_per_iteration_and_lr_mult(tmp_path):
    spy = Spy()
    model_cfg = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4),
                     paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=0.1)}))
    learn = learner(tmp_path, opt=lambda m: build_optimizer(m, model_cfg), lr=0.01,
                    cbs=[spy, CALLBACKS.build(dict(type="ParamSchedulerCallback", schedulers=[
                        dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=5),
                        dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=5, end=40, by_epoch=False)]))])
    quiet_fit(learn, 40, 20)
    head = [l[-1] for l in spy.lrs]
    assert head[0] == pytest.approx(1e-5) and head[4] == pytest.approx(0.01) and head[5] == pytest.approx(0.01)
    for i in range(5, 40): assert head[i] == pytest.approx(1e-4 + (0.01 - 1e-4) * (1 - (i - 5) / 34) ** 0.9)
    assert head[-1] == pytest.approx(1e-4)
    bb = [l[0] for l in spy.lrs]  # the backbone group keeps its 0.1 ratio at every step
    for a, b in zip(bb, head): assert a == pytest.approx(0.1 * b)
    assert learn.recorder.hps["lr"] == pytest.approx(head)

def test_epoch_based_schedules_and_conversion(tmp_path):
    spy = Spy()
    learn = learner(tmp_path, cbs=[spy, ParamSchedulerCallback(SCHEDULERS.build(dict(type="StepLR", step_size=1, gamma=0.5, by_epoch=True)))])
    quiet_fit(learn, 3, how="fit")                             # epoch-based: 6 iterations per epoch
    assert [l[0] for l in spy.lrs] == pytest.approx([0.05] * 6 + [0.025] * 6 + [0.0125] * 6)
    s = SCHEDULERS.build(dict(type="MultiStepLR", milestones=[1, 2], gamma=0.1, by_epoch=True, convert_to_iter_based=True)).resolve(18, 6)
    assert (s.milestones, s.unit, s.end) == ([6, 12], "iter", 18)
    c = SCHEDULERS.build(dict(type="CosineAnnealingLR", eta_min=0.0)).resolve(11, 6)
    assert c(1.0, 0) == 1.0 and c(1.0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 11)))
    with pytest.raises(ValueError, match="empty"): PolyLR(begin=50).resolve(40, 6)
    with pytest.raises(ValueError, match="start_factor"): LinearLR(start_factor=2)
    with pytest.raises(ValueError, match="keep one"):
        learn = learner(tmp_path, cbs=[ParamSchedulerCallback(dict(type="PolyLR"))])
        quiet_fit(learn, 1, 1e-2, how="fit_one_cycle")

def test_registries_build_everything_from_config_dicts():
    for cfg in [dict(type="CheckpointHook", interval=100, save_best="mIoU", rule="greater", max_keep_ckpts=2),
                dict(type="EMAHook", momentum=0.001), dict(type="LoggerHook", interval=10), dict(type="NaNGuardCallback"),
                dict(type="EarlyStoppingHook", monitor="mIoU", patience=3), dict(type="IterBasedTrainLoop", max_iters=80, val_interval=8),
                dict(type="ResumeCallback", checkpoint="work_dirs/x.pth"), dict(type="ParamSchedulerHook", schedulers=[dict(type="PolyLR", power=0.9)])]:
        assert isinstance(CALLBACKS.build(cfg), Callback)
    for n in ["PolyLR", "LinearLR", "ConstantLR", "CosineAnnealingLR", "StepLR", "MultiStepLR", "ExponentialLR", "PolyLRRatio"]:
        assert SCHEDULERS.get(n).__module__ == "segnb.callbacks"
    assert OPTIMIZERS.get("OptimWrapper") is build_optimizer
    o = OPTIMIZERS.build(dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3)), model=Net())
    assert isinstance(o, ParamwiseOptimWrapper) and type(o.opt).__name__ == "AdamW"
    assert infer_rule("mIoU") == "greater" and infer_rule("valid_loss") == infer_rule("rmse") == "less"

# ---------------------------------------------------------------- optimizer

def test_paramwise_optimizer_with_fastai_layer_groups(tmp_path):
    splitter = lambda m: [list(m.backbone.parameters()), list(m.head.parameters())]
    cfg = dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-2),
               paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={"head.weight": dict(lr_mult=10.0)}))
    m = Net()
    opt = build_optimizer(m, cfg, splitter=splitter)
    assert opt.n_layer_groups == 2 and [pg["layer_group"] for pg in opt.opt.param_groups] == [0, 0, 1, 1]
    wd = {n: pg["weight_decay"] for pg, names in zip(opt.opt.param_groups, opt.param_names) for n in names}
    assert wd["backbone.1.weight"] == wd["backbone.1.bias"] == wd["backbone.0.bias"] == 0 and wd["backbone.0.weight"] == 1e-2
    opt.set_hyper("lr", slice(1e-3, 1e-1))                      # discriminative lrs over the 2 layer groups
    assert [pg["lr"] for pg in opt.opt.param_groups] == pytest.approx([1e-3, 1e-3, 1.0, 1e-1])  # head.weight x10
    assert [h["lr"] for h in opt.hypers] == pytest.approx([1e-3, 1e-3, 1e-1, 1e-1])
    with pytest.raises(ValueError, match="one per layer group"): opt.set_hyper("lr", [1, 2, 3])
    learn = Learner(learner(tmp_path).dls, m, loss_func=m.loss, opt_func=opt, splitter=splitter, lr=0.1)
    learn.freeze()
    assert not any(p.requires_grad for p in m.backbone[0].parameters()) and all(p.requires_grad for p in m.head.parameters())
    assert all(p.requires_grad for p in m.backbone[1].parameters())  # fastai keeps BN trainable (train_bn)
    before = m.backbone[0].weight.detach().clone()
    quiet_fit(learn, 1, how="fit")
    assert torch.equal(before, m.backbone[0].weight)
    learn.unfreeze()
    quiet_fit(learn, 1, lr_max=slice(1e-4, 1e-2), how="fit_one_cycle")
    assert not torch.equal(before, m.backbone[0].weight)
    sd = opt.state_dict()
    opt2 = build_optimizer(Net(), cfg, splitter=splitter); opt2.load_state_dict(sd)
    assert [h["lr"] for h in opt2.hypers] == pytest.approx([h["lr"] for h in opt.hypers])

def test_clip_grad_and_config_errors():
    m = Net()
    opt = build_optimizer(m, dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1), clip_grad=dict(max_norm=1e-3)))
    m.loss(m(torch.randn(2, 3, 4, 4) * 100), torch.zeros(2, 4, 4, dtype=torch.long)).backward()
    opt.step()
    assert opt.last_grad_norm > 1e-3
    assert torch.nn.utils.get_total_norm([p.grad for p in m.parameters()]) <= 1e-3 * 1.01
    with pytest.raises(ValueError, match="max_norm"): build_optimizer(m, dict(type="SGD", lr=0.1, clip_grad=dict(norm_type=2)))
    with pytest.raises(ValueError, match="GradientAccumulation"):
        build_optimizer(m, dict(optimizer=dict(type="SGD", lr=0.1), accumulative_counts=4))
    with pytest.raises(ValueError, match=r"custom_keys.head: unknown field"):
        build_optimizer(m, dict(type="SGD", lr=0.1, paramwise_cfg=dict(custom_keys={"head": dict(lr=1)})))
    frozen = paramwise_multipliers(m, dict(custom_keys={"backbone.0": dict(requires_grad=False)}))
    assert frozen["backbone.0.weight"]["rule"] == "custom_keys['backbone.0']" and not m.backbone[0].weight.requires_grad

# ---------------------------------------------------------------- checkpoints, best, EMA, early stopping, logs

def test_checkpoint_best_rule_keep_and_last(tmp_path):
    scores = [0.3, 0.5, 0.4, 0.6, 0.1]
    ck = CheckpointCallback(interval=4, save_best="mIoU", max_keep_ckpts=2)
    learn = learner(tmp_path, metrics=[FakeMIoU()], cbs=[ck, Script(scores)])
    quiet_fit(learn, 22, 5)                                    # validations at 5, 10, 15, 20, 22
    files = sorted(p.name for p in (tmp_path / "models").glob("*.pth"))
    assert files == ["best_mIoU_iter_20.pth", "iter_20.pth", "iter_22.pth"], files
    assert ck.best_score == 0.6 and (tmp_path / "models" / "last_checkpoint").read_text() == "iter_22.pth"
    assert load_checkpoint(tmp_path / "models" / "best_mIoU_iter_20.pth")["callbacks"]["checkpoint"]["best_score"] == 0.6
    ck2 = CheckpointCallback(save_best="mIoU", rule="less", out_dir=tmp_path / "less")
    learn = learner(tmp_path, metrics=[FakeMIoU()], cbs=[ck2, Script(scores)])
    quiet_fit(learn, 22, 5)
    assert sorted(p.name for p in (tmp_path / "less").glob("*.pth")) == ["best_mIoU_iter_22.pth", "iter_22.pth"]
    with pytest.raises(ValueError, match=r"records \['train_loss', 'valid_loss'\]"):
        quiet_fit(learner(tmp_path, cbs=[CheckpointCallback(save_best="mIoU")]), 4, 2)

def test_ema_matches_a_manual_average_and_is_used_for_validation(tmp_path):
    hist = []
    class Track(Callback):
        order = 57  # before the EMA update
        def after_batch(self):
            if self.training: hist.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})
    ema = EMACallback(momentum=0.25, interval=2, begin_iter=2)
    learn = learner(tmp_path, cbs=[Track(), ema, CheckpointCallback(interval=10)])
    init = {k: v.clone() for k, v in learn.model.state_dict().items()}
    quiet_fit(learn, 10, 10)
    ref = {k: v.clone().float() for k, v in init.items()}
    for it, sd in enumerate(hist, start=1):
        if it % 2: continue
        for k in ref:
            if k in dict(learn.model.named_parameters()): ref[k] = ref[k].lerp(sd[k].float(), 0.25 if it > 2 else 1.0)
            else: ref[k] = sd[k].clone()
    for k in ref: assert torch.allclose(ema.shadow[k].float(), ref[k].float(), atol=1e-6), k
    raw = {k: v.clone() for k, v in learn.model.state_dict().items()}
    v_ema = learn.validate()[0]
    m2 = Net(); m2.load_state_dict(ema.shadow)
    l2 = Learner(learn.dls, m2, loss_func=m2.loss)
    assert l2.validate()[0] == pytest.approx(v_ema)
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, raw[k])  # swapped back exactly
    m3 = load_weights(Net(), tmp_path / "models" / "iter_10.pth", ema=True)
    for k, v in m3.state_dict().items(): assert torch.equal(v, ema.shadow[k])

def test_early_stopping_rule_and_resume_state(tmp_path):
    es = CALLBACKS.build(dict(type="EarlyStoppingHook", monitor="mIoU", rule="greater", patience=2))
    learn = learner(tmp_path, metrics=[FakeMIoU()], cbs=[es, Script([0.5, 0.6, 0.55, 0.58, 0.59, 0.7]), CheckpointCallback(interval=3)])
    quiet_fit(learn, 30, 3)                                    # stops after 0.55, 0.58 fail to beat 0.6
    assert learn.train_iter == 12 and es.best == 0.6 and es.wait == 2
    st = load_checkpoint(tmp_path / "models" / "iter_12.pth")["callbacks"]["early_stopping"]
    assert st == {"best": 0.6, "wait": 1}  # written before the 12th-iteration validation
    with pytest.raises(ValueError, match="records no such value"):
        quiet_fit(learner(tmp_path, cbs=[EarlyStoppingCallback(monitor="mDice")]), 4, 2)

def test_logger_writes_csv_jsonl_and_tensorboard(tmp_path):
    log = LoggerCallback(interval=4, out_dir=tmp_path / "logs")
    learn = learner(tmp_path, metrics=[FakeMIoU()], cbs=[log])
    quiet_fit(learn, 10, 5)
    recs = [json.loads(l) for l in open(log.log_dir / "scalars.jsonl")]
    train = [r for r in recs if r["mode"] == "train"]
    assert [r["iter"] for r in train] == [4, 8, 10] and [r["iter"] for r in recs if r["mode"] == "val"] == [5, 10]
    r = train[0]
    assert set(r) >= {"iter", "epoch", "lr", "loss", "loss_ce", "loss_aux", "data_time", "time"}
    assert r["loss"] == pytest.approx(r["loss_ce"] + r["loss_aux"], rel=1e-5) and r["time"] >= r["data_time"] >= 0
    head = (log.log_dir / "train.csv").read_text().splitlines()
    assert head[0].split(",")[:4] == ["iter", "epoch", "lr", "loss"] and len(head) == 4
    assert "mIoU" in (log.log_dir / "val.csv").read_text().splitlines()[0]
    try: import tensorboard  # noqa: F401  (the dev extra installs it; TensorBoard files are written only when it is installed)
    except ImportError: assert not (log.log_dir / "tb").exists()
    else: assert list((log.log_dir / "tb").glob("events.out.tfevents.*"))

def test_datasets_with_set_epoch_see_the_data_pass_also_after_resume(tmp_path):
    from segnb.data.core import SegDL
    class EpochSet(IndexSet):
        "Items carry the epoch the dataset was last told (WeightedConcatDataset-style redraws)."
        def __init__(self, n): super().__init__(n); self.epoch = -1
        def set_epoch(self, e): self.epoch = e
        def __getitem__(self, i):
            x, y = super().__getitem__(i); x[1, 0, 0] = self.epoch
            return x, y
    mk = lambda: SegDL(EpochSet(12), bs=4, shuffle=True, drop_last=True, num_workers=0)
    a = InfiniteLoader(mk(), seed=1)
    assert [int(next(a)[0][0, 1, 0, 0]) for _ in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    b = InfiniteLoader(mk(), seed=1); b.load_state_dict(a.state_dict())  # a fresh DataLoader, as after a restart
    assert [int(next(b)[0][0, 1, 0, 0]) for _ in range(3)] == [2, 2, 3]
