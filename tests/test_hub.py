"Hub: save_pretrained -> from_pretrained round trips, nothing unpickled, push_to_hub through the real huggingface_hub calls (stubbed network), learners."
import json, os, pickle
from pathlib import Path
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import RepoUrl
from segnb.config import Config
from segnb.inference import Segmenter, save_run, tiny_model, TINY_MODEL_CFG
from segnb.data.synthetic import SYNTHETIC_META, render_scene, synthetic_scenes
import segnb.hub  # noqa: F401  (Learner.save_pretrained / push_to_hub)

PIPE = [dict(type="Resize", scale=[64, 64], keep_ratio=True)]

@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    run = save_run(tiny_model(seed=5), tmp_path_factory.mktemp("run"), dict(model=TINY_MODEL_CFG, data=dict(val_pipeline=PIPE)),
                   meta=SYNTHETIC_META)
    (run / "metrics.json").write_text(json.dumps({"metrics": {"mIoU": 55.5, "aAcc": 80.1}, "table": "| Class | IoU |"}))
    return Segmenter.from_run(run)

def _imgs(): return [render_scene(np.random.default_rng([9, i]), (56 + 8 * i, 64))[0] for i in range(3)]

def test_round_trip_without_unpickling(tmp_path, seg, monkeypatch):
    d = tmp_path / "saved"
    seg.save_pretrained(d)
    assert {"model.safetensors", "config.yaml", "config.json", "meta.json", "metrics.json", "README.md"} <= {p.name for p in d.iterdir()}
    def no_unpickle(*a, **k): raise AssertionError("from_pretrained must not unpickle")
    monkeypatch.setattr(torch, "load", no_unpickle); monkeypatch.setattr(pickle, "load", no_unpickle); monkeypatch.setattr(pickle, "loads", no_unpickle)
    back = Segmenter.from_pretrained(d)
    monkeypatch.undo()
    for a, b in zip(seg.predict(_imgs(), return_probs=True), back.predict(_imgs(), return_probs=True)):
        assert (a.labels == b.labels).all() and np.abs(a.probs - b.probs).max() < 1e-5
    assert back.meta.classes == SYNTHETIC_META.classes and back.info["metrics"]["metrics"]["mIoU"] == 55.5
    card = ModelCard.load(d / "README.md")
    assert card.data.library_name == "segnb" and card.data.pipeline_tag == "image-segmentation"
    assert "| mIoU | 55.50 |" in card.text and "config.yaml" in card.text and "| 1 | circle |" in card.text
    cfgj = json.loads((d / "config.json").read_text())
    assert cfgj["task"] == "seg" and cfgj["segnb_config"]["model"]["type"] == "EncoderDecoder"
    assert Config.fromfile(d / "config.yaml").to_dict() == seg.cfg.to_dict()

def test_pickle_and_mismatch_are_refused(tmp_path, seg):
    d = tmp_path / "s"; seg.save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save({"state_dict": {}}, d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="never pickled"): Segmenter.from_pretrained(d)
    d2 = tmp_path / "s2"; seg.save_pretrained(d2)
    cfg = Config.fromfile(d2 / "config.yaml"); cfg.model.decode_head.num_classes = 4; cfg.dump(d2 / "config.yaml")
    with pytest.raises(RuntimeError, match="does not match"): Segmenter.from_pretrained(d2)

def test_push_to_hub_calls_huggingface_hub(monkeypatch, seg):
    calls = {}
    def create_repo(self, repo_id, **kw): calls["create_repo"] = (repo_id, kw); return RepoUrl(f"https://huggingface.co/{repo_id}")
    def upload_folder(self, *, repo_id, folder_path, **kw):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        calls["upload_folder"] = (repo_id, kw, files); return "https://huggingface.co/me/m/commit/1"
    monkeypatch.setattr(HfApi, "create_repo", create_repo); monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    seg.push_to_hub("me/tiny", private=True, commit_message="first")
    assert calls["create_repo"][0] == "me/tiny" and calls["create_repo"][1]["private"] is True and calls["create_repo"][1]["exist_ok"]
    repo, kw, files = calls["upload_folder"]
    assert repo == "me/tiny" and kw["commit_message"] == "first" and kw.get("repo_type", "model") == "model"
    assert {"model.safetensors", "config.yaml", "meta.json", "README.md"} <= set(files)
    assert b"library_name: segnb" in files["README.md"]

def test_from_pretrained_repo_id_goes_through_snapshot_download(monkeypatch, tmp_path, seg):
    "A repo id is fetched with huggingface_hub (stubbed here: no network), only the files segnb needs."
    d = tmp_path / "snap"; seg.save_pretrained(d)
    seen = {}
    import segnb.hub as hub, huggingface_hub.hub_mixin as mixin
    def fake_snapshot(repo_id, **kw): seen["snapshot"] = (repo_id, kw); return str(d)
    def fake_download(repo_id, filename, **kw): seen["config"] = (repo_id, filename); return str(d / filename)
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot); monkeypatch.setattr(mixin, "hf_hub_download", fake_download)
    back = Segmenter.from_pretrained("me/tiny", revision="v1")
    assert seen["snapshot"][0] == "me/tiny" and seen["snapshot"][1]["revision"] == "v1"
    assert "model.safetensors" in seen["snapshot"][1]["allow_patterns"] and seen["config"] == ("me/tiny", "config.json")
    assert (back.predict(_imgs()[0]).labels == seg.predict(_imgs()[0]).labels).all()

def test_learner_paths(tmp_path, monkeypatch):
    "learn.save_pretrained / learn.push_to_hub and fastai's learn.export + load_learner all predict like the learner's model."
    from segnb.train import learner_from_config
    from fastai.learner import load_learner
    root = synthetic_scenes(8, size=64, seed=2, root=tmp_path / "scenes")
    cfg = Config.fromdict(dict(data=dict(data_root=str(root), batch_size=4, num_workers=0, val_pipeline=PIPE), model=TINY_MODEL_CFG,
                               optimizer=dict(type="AdamW", lr=1e-3), schedule=dict(max_iters=2, val_interval=2), work_dir=str(tmp_path / "w")))
    learn = learner_from_config(cfg)
    ref = Segmenter.from_learner(learn)
    learn.save_pretrained(tmp_path / "lp")
    img = _imgs()[1]
    assert (Segmenter.from_pretrained(tmp_path / "lp").predict(img).labels == ref.predict(img).labels).all()
    up = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *, repo_id, folder_path, **kw: up.setdefault("files", sorted(os.listdir(folder_path))))
    learn.push_to_hub("me/from-learner")
    assert "model.safetensors" in up["files"]
    learn.export(tmp_path / "learner.pkl")          # fastai's pickle: trusted files only
    assert len(learn.dls.train) > 0                 # export empties a copy of the loaders, not the learner's
    back = load_learner(tmp_path / "learner.pkl", cpu=True)
    assert (Segmenter.from_learner(back).predict(img).labels == ref.predict(img).labels).all()
