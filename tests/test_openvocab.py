"Open-vocabulary segmentation (segnb.openvocab): model contract, training through fastai and segnb train, the seen/unseen protocol, prediction by text, the CLI."
import json
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from segnb.openvocab import (OpenVocabEncoderDecoder, OpenVocabSegmenter, OpenVocabIoUMetric, OpenVocabResult, openvocab_learner,
                             openvocab_segment, evaluate_open_vocab, load_openvocab, parse_queries, dataset_classes,
                             text_encoder_config, openvocab_model_config)
from segnb.registry import MODELS, METRICS
from segnb.data.synthetic import SyntheticScenes, SYNTHETIC_CLASSES
from segnb.data.core import seg_dataloaders
from segnb.config import Config, ConfigError
from conftest import run_cli

CONFIGS = Path(__file__).resolve().parents[1] / "segnb" / "configs"
TINY_TEXT = dict(type="OpenCLIPTextEncoder", model_name="tiny-test-ViT", pretrained=None, templates="photo")
TINY_HEAD = dict(channels=16, num_layers=1, num_heads=2, appearance_guidance=8, text_guidance=8, decoder_guidance=8, guidance_indices=[0])
TINY_BB = dict(type="TimmBackbone", model_name="test_resnet.r160_in1k", out_indices=[1, 2])


@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)


@pytest.fixture(scope="module")
def text():
    "One random tiny open_clip text tower shared by the tests (a fresh one would have other random weights)."
    from segnb.registry import TEXT_ENCODERS
    torch.manual_seed(0)
    return TEXT_ENCODERS.build(TINY_TEXT)


def tiny_model(text, **kw):
    return OpenVocabEncoderDecoder(backbone=TINY_BB, decode_head=TINY_HEAD, text_encoder=text, **{"class_names": SYNTHETIC_CLASSES, **kw})


@pytest.fixture(scope="module")
def scene():
    return SyntheticScenes(1, 64, 5, "val").render(0)[0]


# ---------------------------------------------------------------- model contract
def test_forward_modes_and_class_lists(text):
    m = tiny_model(text, unseen=["ring"])
    x = torch.randn(2, 3, 64, 64)
    out = m.train()(x)
    assert out.shape == (2, 5, 16, 16)                              # train: the seen classes, stride 4
    assert m.eval()(x).shape == (2, 6, 64, 64)                     # eval: every class at the input size
    assert m(x, class_names=["disk", ["box", "cube"]]).shape == (2, 2, 64, 64)
    assert m.num_classes == 6
    m.set_classes("disk,box,bands")
    assert m.num_classes == 3 and m.predict(x).shape == (2, 64, 64) and int(m.predict(x).max()) < 3
    assert m.predict(x, class_names=["a"]).unique().tolist() == [0]
    with pytest.raises(ValueError, match="no class list"):
        OpenVocabEncoderDecoder(backbone=TINY_BB, decode_head=TINY_HEAD, text_encoder=text).eval()(x)


def test_text_encoder_outside_state_and_cached(text):
    m = tiny_model(text)
    assert not any("text" in k and "guid" not in k and "proj" not in k for k in m.state_dict())
    assert all(id(p) not in {id(q) for q in text.parameters()} for p in m.parameters())
    text.clear_cache()
    m._emb_cache.clear()
    x = torch.randn(1, 3, 64, 64)
    m.eval()
    for _ in range(3): m(x)
    assert text.misses == 6 and len(m._emb_cache) == 1             # one text pass per class, one entry per class list
    m(x, class_names=["circle", "disk"])
    assert text.misses == 7 and len(m._emb_cache) == 2              # only the new name is embedded
    m.max_cached = 2
    m(x, class_names=["x"]); assert len(m._emb_cache) == 2
    with pytest.raises(TypeError, match="text_encoder must be"):
        m.text_encoder = OpenVocabEncoderDecoder  # not an encoder at all
    # a text encoder of another width is refused
    from segnb.models.clip import add_clip_config, TINY_CLIP_CONFIGS
    cfg = {**TINY_CLIP_CONFIGS["tiny-test-ViT"], "embed_dim": 32}
    add_clip_config("tiny-test-ViT-32", cfg)
    with pytest.raises(ValueError, match="embeds in 32"):
        m.text_encoder = dict(type="OpenCLIPTextEncoder", model_name="tiny-test-ViT-32", pretrained=None)


def test_loss_maps_labels_by_name(text):
    m = tiny_model(text, unseen=["triangle"]).train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 6, (2, 64, 64))
    y[0, :4] = 255
    l1 = m.loss(m(x), y)
    l2 = m.loss(m(x), torch.where(y == 3, 255, y))                  # unseen pixels count as ignored
    torch.testing.assert_close(l1, l2)
    # labels are re-indexed into the train list: 4 (ring) is position 3 once triangle is gone
    lut = m.label_lut(m.train_classes)
    assert lut[:6].tolist() == [0, 1, 2, 255, 3, 4] and lut[255] == 255
    # eval mode scores all classes; the loss uses the list of the last forward
    m.eval()
    assert torch.isfinite(m.loss(m(x), y))
    # custom class lists: unknown dataset classes are ignored
    m(x, class_names=["square", "background"])
    assert m.label_lut(["square", "background"])[:3].tolist() == [1, 255, 0]


def test_bad_arguments(text):
    with pytest.raises(ValueError, match="not in class_names"): tiny_model(text, unseen=["hexagon"])
    with pytest.raises(ValueError, match="at least one class"): tiny_model(text, class_names=["a"], unseen=["a"])
    with pytest.raises(ValueError, match="no auxiliary"): tiny_model(text, auxiliary_head=dict(type="FCNHead"))
    with pytest.raises(ValueError, match="no dataset named"): tiny_model(text, class_names="not_a_dataset")
    with pytest.raises(ValueError, match="duplicate"): parse_queries("cat, dog, cat")
    with pytest.raises(ValueError, match="no class names"): parse_queries([])
    with pytest.raises(ValueError, match="'minilm'"): text_encoder_config("no-such-encoder")
    assert dataset_classes("coco_stuff164k")[:2] == ["person", "bicycle"] and len(dataset_classes("coco_stuff164k")) == 171
    assert text_encoder_config("minilm")["type"] == "SentenceTextEncoder"
    assert text_encoder_config("ViT-B-16", "openai")["pretrained"] == "openai"


def test_neck_and_explicit_head(text):
    m = OpenVocabEncoderDecoder(backbone=dict(TINY_BB, out_indices=[1, 2, 3]),
                                neck=dict(type="FPN", in_channels=[32, 48, 192], out_channels=32, num_outs=3),
                                decode_head=TINY_HEAD, text_encoder=text, class_names=["a", "b"], embed_index=1)
    assert m.decode_head.in_channels == [32, 32, 32, 64] and m.embed_proj.in_channels == 32
    assert m.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    # no projection when the backbone already embeds in the text space
    m2 = OpenVocabEncoderDecoder(backbone=TINY_BB, decode_head=dict(TINY_HEAD, in_channels=[32, 48], text_dim=64),
                                 text_encoder=text, class_names=["a"], embed_proj=False)
    assert m2.embed_proj is None and m2.decode_head.text_proj is not None   # the head projects the text instead


def test_clip_backbone_model_and_config():
    "The CAT-Seg config builds (with a tiny random CLIP in place of ViT-B-16) and runs; the frozen tower gets no gradient."
    cfg = Config.fromfile(CONFIGS / "openvocab_catseg_vit-b16_80k_coco-stuff164k-384x384.yaml",
                          ["model.backbone.clip_model=tiny-test-ViT", "model.backbone.pretrained=null",
                           "model.text_encoder.model_name=tiny-test-ViT", "model.text_encoder.pretrained=null",
                           "model.decode_head.channels=16", "model.decode_head.appearance_guidance=8", "model.decode_head.text_guidance=8",
                           "model.test_cfg.crop_size=[64,64]", "model.test_cfg.stride=[48,48]"])
    m = MODELS.build(cfg.model)
    assert len(m.class_names) == 171 and m.embed_proj is None and m.mean[0] == pytest.approx(0.4815, abs=1e-3)
    x = torch.randn(1, 3, 64, 64)
    m.train()
    m.loss(m(x), torch.randint(0, 171, (1, 64, 64))).backward()
    assert all(p.grad is None for p in m.backbone.parameters()) and any(p.grad is not None for p in m.decode_head.parameters())
    assert m.eval()(torch.randn(1, 3, 80, 96), class_names=["cat", "sky"]).shape == (1, 2, 80, 96)   # slide mode


# ---------------------------------------------------------------- training
def test_learner_trains_and_saves(tmp_path, text, scene):
    dls = seg_dataloaders((SyntheticScenes(8, 64, 0, "train"), SyntheticScenes(4, 64, 0, "val")), bs=4)
    cfg = openvocab_model_config(SYNTHETIC_CLASSES, "test_resnet.r160_in1k", TINY_TEXT, unseen=["ring"], head=TINY_HEAD)
    model = MODELS.build(cfg, text_encoder=text)
    learn = openvocab_learner(dls, model=model)
    # a fixed batch, several steps: the loss goes down through fastai's loop
    xb, yb = dls.one_batch()
    learn.create_opt(); learn.opt.set_hyper("lr", 5e-3); learn.model.train()
    losses = []
    for _ in range(10):
        loss = learn.loss_func(learn.model(xb), yb); loss.backward(); learn.opt.step(); learn.opt.zero_grad(); losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses
    learn.fit(1, 1e-3)
    names = [m.name for m in learn.metrics]
    assert names == ["aAcc", "mIoU", "mIoU_seen", "mIoU_unseen", "hIoU"]
    vals = dict(zip(["valid_loss"] + names, learn.recorder.values[-1][1:]))
    res = evaluate_open_vocab(learn.model, dls.valid, SYNTHETIC_CLASSES)
    assert res["unseen"] == ["ring"] and res["mIoU"] == pytest.approx(vals["mIoU"], abs=1e-3)
    # save, reload (sharing the random text tower), predict by text
    run = learn.model.save(tmp_path / "run")
    cfg_saved = Config.fromfile(run / "config.yaml")
    assert cfg_saved.model.unseen == ["ring"] and cfg_saved.model.decode_head.in_channels == [32, 48, 64]
    m2 = load_openvocab(run, text_encoder=text)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(m2.eval()(x), learn.model.eval()(x))
    r = OpenVocabSegmenter(head=run, text_encoder=text).predict(scene, ["backdrop", "disk"])
    assert isinstance(r, OpenVocabResult) and r.scores.shape == (2, 64, 64)
    assert load_openvocab(run / "checkpoints" / "model.pth", text_encoder=text).class_names == SYNTHETIC_CLASSES


def test_segnb_train_config_then_predict_by_text(tmp_path, scene):
    "The offline config trains with `train()` (the real MiniLM text encoder), and the run folder answers text queries."
    from segnb.train import train
    cfg = Config.fromfile(CONFIGS / "openvocab_minilm_r18_synthetic-96x96_unseen-triangle.yaml",
                          ["model.backbone.model_name=test_resnet.r160_in1k", "data.dataset.size=64", "data.train.n=8", "data.val.n=4",
                           "data.batch_size=4", "schedule.max_iters=2", "schedule.val_interval=2", "schedule.warmup_iters=0",
                           "callbacks.0.interval=2"])
    learn = train(cfg, work_dir=tmp_path / "run", quiet=True)
    assert type(learn.model.text_encoder).__name__ == "SentenceTextEncoder" and learn.model.unseen == ["triangle"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert {"mIoU", "mIoU_seen", "mIoU_unseen", "hIoU"} <= set(metrics)
    Image.fromarray(scene).save(tmp_path / "scene.png")
    seg = OpenVocabSegmenter(head=tmp_path / "run")
    r = seg.predict(tmp_path / "scene.png", "backdrop, disk, box")
    assert r.name == "scene" and r.labels.shape == (64, 64) and r.probs.shape == (3, 64, 64)
    np.testing.assert_allclose(r.probs.sum(0), 1, atol=1e-4)
    # the closed-set predictor of segnb.inference reads the same run (the training class list)
    from segnb.inference import Segmenter
    rc = Segmenter.from_run(tmp_path / "run").predict(scene)
    assert rc.classes == SYNTHETIC_CLASSES and rc.labels.shape == (64, 64) and rc.labels.max() < 6
    # the CLI, in process: segnb predict RUN IMG --queries
    from segnb.cli import main
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "scene.png"), "--out", str(tmp_path / "o"),
                 "--queries", "backdrop,disk,box"]) == 0
    lab = np.asarray(Image.open(tmp_path / "o" / "scene.png"))
    assert lab.shape == (64, 64) and lab.max() < 3
    assert json.loads((tmp_path / "o" / "queries.json").read_text())["queries"] == ["backdrop", "disk", "box"]


# ---------------------------------------------------------------- evaluation protocol
class _Oracle(nn.Module):
    "Scores the true label high for every class except `wrong`, whose pixels it gives to class `to`."
    def __init__(self, labels, wrong, to=0):
        super().__init__(); self.labels, self.wrong, self.to, self.w = labels, wrong, to, nn.Parameter(torch.zeros(()))
    def forward(self, x, class_names=None):
        y = self.labels.clone()
        y[y == self.wrong] = self.to
        y[y == 255] = self.to
        return torch.nn.functional.one_hot(y, len(class_names)).permute(0, 3, 1, 2).float() * 10


def test_evaluate_open_vocab_seen_unseen_and_permuted_names():
    y = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 255]]])
    names = ["bg", "a", "b", "c"]
    model = _Oracle(y, wrong=3)
    dl = [(torch.zeros(1, 3, 2, 4), y)]
    r = evaluate_open_vocab(model, dl, names, unseen=["c"])
    # bg: tp 2, fp 1 (the c pixel) -> 2/3; a, b: 1; c: 0 -> seen mean (2/3 + 1 + 1) / 3, unseen 0, hIoU 0
    assert r["mIoU_seen"] == pytest.approx(100 * (2 / 3 + 2) / 3) and r["mIoU_unseen"] == 0 and r["hIoU"] == 0
    assert r["per_class"]["c"] == 0 and r["seen"] == ["bg", "a", "b"]
    # the same data labelled in another class order gives the same scores when the names follow that order
    perm = torch.tensor([2, 0, 3, 1])               # old label -> new label
    y2 = torch.where(y == 255, y, perm[y.clamp(max=3)])
    names2 = [None] * 4
    for old, new in enumerate(perm.tolist()): names2[new] = names[old]
    r2 = evaluate_open_vocab(_Oracle(y2, wrong=int(perm[3]), to=int(perm[0])), [(torch.zeros(1, 3, 2, 4), y2)], names2, unseen=["c"])
    assert r2["mIoU_seen"] == pytest.approx(r["mIoU_seen"]) and r2["per_class"] == {n: r["per_class"][n] for n in names2}


def test_metric_registry_and_hiou():
    m = METRICS.build(dict(type="OpenVocabIoUMetric", class_names=["x", "y"], seen=["x"], unseen=["y"], percent=False))
    m.update(torch.tensor([[[0, 1, 1, 1]]]), torch.tensor([[[0, 0, 1, 1]]]))
    r = m.compute(sync=False)
    s, u = 0.5, 2 / 3
    assert r["mIoU_seen"] == pytest.approx(s) and r["mIoU_unseen"] == pytest.approx(u)
    assert r["hIoU"] == pytest.approx(2 * s * u / (s + u)) and "hIoU" in m.summary_table(sync=False)
    with pytest.raises(ValueError, match="both seen and unseen"):
        OpenVocabIoUMetric(class_names=["x", "y"], seen=["x"], unseen=["x"])
    m2 = OpenVocabIoUMetric(class_names=["x", "y"])            # nothing unseen: unseen mIoU and hIoU are n/a
    m2.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    assert np.isnan(m2.compute(sync=False)["hIoU"])


# ---------------------------------------------------------------- prediction by text
def test_maskclip_segmenter_inputs(tmp_path, scene):
    seg = OpenVocabSegmenter(clip="tiny-test-ViT", pretrained=None, templates="photo", short_side=48)
    r = seg.predict(scene, ["circle", "ground"])
    assert r.labels.shape == scene.shape[:2] and r.scores.shape == (2, *scene.shape[:2])   # back at the input size
    assert r["ground"].shape == scene.shape[:2] and set(r.class_areas()) == {"circle", "ground"}
    for i in range(3): Image.fromarray(scene).save(tmp_path / f"{i}.png")
    rs = seg.predict(tmp_path, "circle,ground")
    assert len(rs) == 3 and [x.name for x in rs] == ["0", "1", "2"] and all(isinstance(x, OpenVocabResult) for x in rs)
    np.testing.assert_allclose(rs[0].scores, r.scores, atol=1e-5)
    paths = rs[0].save(tmp_path / "out")
    assert paths["labels"].is_file() and paths["overlay"].is_file()
    t = torch.from_numpy(scene).permute(2, 0, 1)          # a uint8 tensor is a picture
    np.testing.assert_allclose(seg.predict(t, ["circle", "ground"]).scores, r.scores, atol=1e-5)
    thr = float(np.median(r.scores.max(0)))
    r3 = seg.predict(scene, ["circle", "ground"], threshold=thr)
    assert ((r3.labels == 255) == (r.scores.max(0) < thr)).all() and (r3.labels == 255).any()
    assert sum(r3.class_areas().values()) < 1
    with pytest.raises(ValueError, match="at least two queries"): seg.predict(scene, ["circle"])
    with pytest.raises(ValueError, match="give the queries"): OpenVocabSegmenter(clip="tiny-test-ViT", pretrained=None).predict(scene)
    with pytest.raises(KeyError, match="not one of the queries"): r["sky"]
    a = openvocab_segment(scene, "circle,ground", clip="tiny-test-ViT", pretrained=None, templates="photo", short_side=48)
    b = openvocab_segment(scene, "circle,ground", clip="tiny-test-ViT", pretrained=None, templates="photo", short_side=48)
    np.testing.assert_allclose(a.scores, b.scores)   # the cached segmenter (same random weights)


def test_head_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"): OpenVocabSegmenter(head=tmp_path / "missing")
    (tmp_path / "r").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"): load_openvocab(tmp_path / "r")
    Config.fromdict({"model": {"type": "EncoderDecoder"}}).dump(tmp_path / "r" / "config.yaml")
    (tmp_path / "r" / "checkpoints").mkdir(); torch.save({"state_dict": {}}, tmp_path / "r" / "checkpoints" / "x.pth")
    with pytest.raises(ConfigError, match="not an OpenVocabEncoderDecoder"): load_openvocab(tmp_path / "r")
    ck = tmp_path / "lone.pth"; torch.save({"state_dict": {}}, ck)
    with pytest.raises(FileNotFoundError, match="no config.yaml"): load_openvocab(ck)


def test_cli_predict_queries_console_script(tmp_path, scene):
    "The installed `segnb` finds --queries on `segnb predict` (segnb.openvocab is one of the CLI's command modules)."
    Image.fromarray(scene).save(tmp_path / "s.png")
    p = run_cli("predict", "tiny-test-ViT", tmp_path / "s.png", "--out", tmp_path / "o", "--queries", "circle, ground",
                "--pretrained", "none", "--templates", "photo", "--threshold", "0.3")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "o" / "s.png").is_file() and (tmp_path / "o" / "s_overlay.png").is_file()
    assert "s: circle" in p.stdout
    q = json.loads((tmp_path / "o" / "queries.json").read_text())
    assert q["queries"] == ["circle", "ground"] and "255" in q
    p = run_cli("predict", "--help")
    assert "--queries" in p.stdout
    p = run_cli("predict", "ViT-B-61", tmp_path / "s.png", "--out", tmp_path / "o", "--queries", "a,b", "--pretrained", "none")
    assert p.returncode == 2 and "did you mean" in p.stderr and "Traceback" not in p.stderr
