"segnb.data.core end to end: folder layouts -> fastai DataLoaders, from Python and from a config; bad items named by file."
import logging
import numpy as np, pytest, torch
from pathlib import Path
from PIL import Image
from segnb.config import Config
from segnb.data.core import (SegMeta, SegFolderDataset, SegDataError, seg_dataloaders, build_dataloaders, load_mask,
                             TensorDepth)
from fastai.torch_core import TensorImage, TensorMask

META = SegMeta(["background", "square", "disc"])

def write_set(root, n=(4, 2), size=(40, 56), mask_mode="index", img_suffix=".png"):
    "A tiny dataset whose image colours are the mask's palette colours (so alignment can be checked after loading)."
    rng = np.random.RandomState(0)
    META.save(root / "meta.json")
    for split, k in zip(("train", "val"), n):
        (root / "img_dir" / split).mkdir(parents=True); (root / "ann_dir" / split).mkdir(parents=True)
        for i in range(k):
            m = np.zeros(size, np.uint8)
            y, x = rng.randint(0, size[0] // 2), rng.randint(0, size[1] // 2)
            m[y:y + 12, x:x + 16] = 1; m[-10:, -10:] = 2
            pal = np.asarray(META.palette, np.uint8)
            Image.fromarray(pal[m]).save(root / "img_dir" / split / f"im{i}{img_suffix}")
            ann = {"index": m, "rgb": pal[m], "zero": m}[mask_mode]  # "zero": 0 = unlabelled under reduce_zero_label
            Image.fromarray(ann).save(root / "ann_dir" / split / f"im{i}.png")
    return root

def test_folder_to_dataloaders_types_and_alignment(tmp_path):
    write_set(tmp_path)
    dls = seg_dataloaders(tmp_path, bs=2, normalize=False)
    assert len(dls.train_ds) == 4 and len(dls.valid_ds) == 2 and dls.c == 3 and dls.vocab == META.classes
    x, y = dls.one_batch()
    assert isinstance(x, TensorImage) and isinstance(y, TensorMask)
    assert x.shape == (2, 3, 40, 56) and y.shape == (2, 40, 56) and y.dtype == torch.int64
    pal = torch.tensor(META.palette, dtype=torch.float32) / 255
    torch.testing.assert_close(x.as_subclass(torch.Tensor), pal[y.as_subclass(torch.Tensor)].permute(0, 3, 1, 2))

def test_config_pipeline_with_workers_keeps_alignment(tmp_path):
    "The MMSeg ADE recipe from a config section, 2 workers: every batch still has image == palette[mask] where not ignored."
    write_set(tmp_path, n=(6, 2))
    cfg = Config.fromdict(dict(data=dict(
        dataset=dict(type="SegFolderDataset", data_root=str(tmp_path), img_suffix=".png"),
        train=dict(img_dir="img_dir/train", ann_dir="ann_dir/train"), val=dict(img_dir="img_dir/val", ann_dir="ann_dir/val"),
        train_pipeline=[dict(type="RandomResize", scale=[112, 40], ratio_range=[0.5, 2.0], keep_ratio=True),
                        dict(type="RandomCrop", crop_size=[32, 32], cat_max_ratio=0.75),
                        dict(type="RandomFlip", prob=0.5), dict(type="Pad", size=[32, 32])],
        batch_size=3, num_workers=2, normalize=False)))
    dls = build_dataloaders(cfg.data)
    pal = torch.tensor(META.palette + [[0, 0, 0]] * 252 + [[0, 0, 0]], dtype=torch.float32) / 255
    for x, y in dls.train:
        assert x.shape == (3, 3, 32, 32) and y.shape == (3, 32, 32)
        yt = y.as_subclass(torch.Tensor)
        assert set(yt.unique().tolist()) <= {0, 1, 2, 255}
        exp = pal[yt].permute(0, 3, 1, 2); keep = (yt != 255)[:, None].expand_as(exp)
        got = x.as_subclass(torch.Tensor)
        # bilinear resize blends colours at class borders only: pixels away from borders must match exactly
        close = ((got - exp).abs() < 0.25)
        assert close[keep].float().mean() > 0.85
    xv, yv = dls.valid.one_batch()
    assert xv.shape[-2:] == (40, 56)  # random transforms are training-only

def test_rgb_and_reduce_zero_label_masks_in_a_dataset(tmp_path):
    write_set(tmp_path / "rgb", mask_mode="rgb")
    ds = SegFolderDataset(tmp_path / "rgb", "img_dir/train", "ann_dir/train", img_suffix=".png")
    m = np.asarray(ds[0][1]); assert set(np.unique(m).tolist()) == {0, 1, 2}
    write_set(tmp_path / "z", mask_mode="zero")
    meta = SegMeta(["square", "disc"], reduce_zero_label=True)
    ds = SegFolderDataset(tmp_path / "z", "img_dir/train", "ann_dir/train", img_suffix=".png", meta=meta)
    got = np.asarray(ds[0][1]); raw = np.asarray(Image.open(tmp_path / "z/ann_dir/train/im0.png"))
    assert set(np.unique(got).tolist()) == {0, 1, 255} and (got[raw == 0] == 255).all() and (got[raw == 2] == 1).all()

def test_bad_items_are_named_and_skippable(tmp_path, caplog):
    write_set(tmp_path)
    bad = tmp_path / "img_dir/train/im1.png"; bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(SegDataError, match="im1.png"):
        dls = seg_dataloaders(tmp_path, bs=4, shuffle=False, normalize=False); dls.one_batch()
    with caplog.at_level(logging.WARNING, logger="segnb.data"):
        dls = seg_dataloaders(tmp_path, bs=4, shuffle=False, normalize=False, on_error="skip")
        x, y = dls.one_batch()
    assert x.shape[0] == 4 and "im1.png" in caplog.text

def test_config_errors_name_the_key(tmp_path):
    write_set(tmp_path)
    with pytest.raises(SegDataError, match="unknown keys"):
        build_dataloaders({"data_root": str(tmp_path), "batchsize": 2})
    with pytest.raises(SegDataError, match=r"pipeline\[0\]"):
        build_dataloaders({"data_root": str(tmp_path), "train_pipeline": [{"type": "RandomCrop"}]})
    with pytest.raises(FileNotFoundError, match="img_dir/train"):
        seg_dataloaders(tmp_path / "nowhere", META)

def test_depth_folder(tmp_path):
    write_set(tmp_path)
    for split in ("train", "val"):
        (tmp_path / "depth_dir" / split).mkdir(parents=True)
        for p in (tmp_path / "img_dir" / split).glob("*.png"):
            Image.fromarray(np.full((40, 56), 1500, np.uint16)).save(tmp_path / "depth_dir" / split / p.name)
    dls = seg_dataloaders(tmp_path, bs=2, depth_dir="depth_dir", item_tfms=[{"type": "RandomFlip", "prob": 1.0}])
    x, y, d = dls.one_batch()
    assert isinstance(d, TensorDepth) and d.shape == (2, 1, 40, 56)
    assert torch.allclose(d.as_subclass(torch.Tensor), torch.full_like(d.as_subclass(torch.Tensor), 1.5))

def test_workers_do_not_hang_after_threaded_opencv_in_the_parent(tmp_path):
    "OpenCV's thread pool does not survive fork: SegDL turns it off before starting workers (this used to hang forever)."
    import subprocess, sys, textwrap
    code = textwrap.dedent('''
        import numpy as np, cv2
        from segnb.data.synthetic import SyntheticScenes
        from segnb.data.core import seg_dataloaders
        x = np.random.randint(0, 255, (1200, 1600, 3), np.uint8)
        for _ in range(3): cv2.resize(x, (2400, 1800))
        dls = seg_dataloaders((SyntheticScenes(8, 48), SyntheticScenes(2, 48, split="val")), bs=4, num_workers=2,
                              item_tfms=[dict(type="RandomResize", scale=(96, 72), ratio_range=(0.5, 2.0)), dict(type="RandomCrop", crop_size=(32, 32)),
                                         dict(type="Pad", size=(32, 32))])
        print("batches", sum(1 for _ in dls.train))''')
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert "batches 2" in r.stdout, r.stderr[-2000:]
