"Joint transforms: exact image/mask alignment, cat_max_ratio, labels never interpolated, ignore padding, configs, DataBlock."
import random
import numpy as np, pytest, torch
from fastai.torch_core import ArrayImage, ArrayMask, TensorImage, TensorMask
from segnb.data.core import SegMeta, SegDataBlock, ArrayDepth
from segnb.data.transforms import (build_pipeline, apply_pipeline, fuse_transforms, RandomResize, RandomCrop, RandomFlip,
                                   RandomRotate, Pad, Resize, PhotoMetricDistortion, ResizeCrop, _crop_ok)
from segnb.registry import TRANSFORMS

PAL = np.zeros((256, 3), np.uint8); PAL[1], PAL[2], PAL[3], PAL[255] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

def scene(h=90, w=120, seed=0):
    rng = np.random.RandomState(seed); m = np.zeros((h, w), np.uint8)
    for c in (1, 2, 3):
        y, x = rng.randint(0, h - 20), rng.randint(0, w - 20); m[y:y + rng.randint(10, 40), x:x + rng.randint(10, 50)] = c
    return PAL[m].view(ArrayImage), m.view(ArrayMask)

def assert_aligned(img, mask, exact):
    img, mask = np.asarray(img).astype(int), np.asarray(mask)
    keep = mask != 255
    expect = PAL[mask].astype(int)
    if exact: assert (img[keep] == expect[keep]).all()
    else:     # bilinear blends only at class borders: pure-coloured pixels must carry their mask's label
        dist = np.abs(img[..., None, :] - PAL[:4].astype(int)).max(-1)
        pure = (dist.min(-1) <= 40) & keep
        assert pure.mean() > 0.7 and (dist.argmin(-1)[pure] == mask[pure]).mean() > 0.998

@pytest.mark.parametrize("tfm,exact", [(RandomCrop((40, 60)), True), (RandomFlip(1.0, "horizontal"), True), (RandomFlip(1.0, "diagonal"), True),
                                       (Pad(size=(150, 100)), True), (Resize(scale=(77, 51)), False), (RandomRotate(1.0, 25), False),
                                       (ResizeCrop(RandomResize((240, 180), (0.5, 2.0)), RandomCrop((50, 50), 0.75)), False)])
def test_alignment_and_labels(tfm, exact):
    random.seed(0)
    for s in range(4):
        img, mask = scene(seed=s)
        i2, m2 = apply_pipeline([tfm], img, mask)
        assert i2.shape[:2] == m2.shape
        assert set(np.unique(np.asarray(m2)).tolist()) <= {0, 1, 2, 3, 255}  # labels never interpolated
        assert_aligned(i2, m2, exact)

def test_pad_and_rotate_fill_masks_with_ignore_index():
    img, mask = scene()
    i2, m2 = apply_pipeline([Pad(size=(128, 96))], img, mask)
    assert (np.asarray(m2)[90:] == 255).all() and (np.asarray(m2)[:, 120:] == 255).all() and (np.asarray(i2)[90:] == 0).all()
    _, m3 = apply_pipeline([RandomRotate(1.0, (40, 40), seg_pad_val=255)], img, mask)
    assert np.asarray(m3)[0, 0] == 255 and np.asarray(m3)[-1, -1] == 255

def test_cat_max_ratio_follows_mmseg():
    m = np.zeros((100, 100), np.uint8); m[:, :60][:, (np.arange(60) // 5) % 2 == 0] = 1
    x = np.repeat(m[..., None], 3, -1).view(ArrayImage)
    random.seed(1)
    crops = [apply_pipeline([RandomCrop((40, 40), cat_max_ratio=0.75)], x, m.view(ArrayMask))[1] for _ in range(100)]
    assert all(_crop_ok(c, 0.75, 255) for c in crops)
    random.seed(1)
    plain = [apply_pipeline([RandomCrop((40, 40))], x, m.view(ArrayMask))[1] for _ in range(100)]
    assert sum(not _crop_ok(c, 0.75, 255) for c in plain) > 20

def test_config_list_fusion_and_training_only():
    cfg = [{"type": "RandomResize", "scale": [2048, 512], "ratio_range": [0.5, 2.0], "keep_ratio": True},
           {"type": "RandomCrop", "crop_size": [64, 64], "cat_max_ratio": 0.75}, {"type": "RandomFlip", "prob": 0.5},
           {"type": "PhotoMetricDistortion"}, {"type": "Pad", "size": [64, 64]}, {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1]}]
    tfms = build_pipeline(cfg)
    assert type(tfms[0]).__name__ == "ResizeCrop" and len(tfms) == 5
    img, mask = scene()
    i2, m2 = apply_pipeline(tfms, img, mask)
    assert i2.shape == (64, 64, 3) and i2.dtype == np.float32 and m2.shape == (64, 64)
    iv, mv = apply_pipeline(tfms, img, mask, split_idx=1)   # validation: only deterministic ones (Pad, Normalize)
    assert iv.shape == (90, 120, 3) and (np.asarray(mv) == np.asarray(mask)).all()
    assert set(TRANSFORMS.list()) >= {"Resize", "RandomResize", "RandomChoiceResize", "ResizeShortestEdge", "ResizeToMultiple", "RandomCrop",
                                      "RandomFlip", "RandomRotate", "RandomRotFlip", "RandomCutOut", "PhotoMetricDistortion", "AdjustGamma",
                                      "CLAHE", "Rerange", "RGB2Gray", "Pad", "Normalize", "RandomMosaic"}

def test_depth_follows_geometry_without_mixing_values():
    img, mask = scene()
    d = np.where(np.asarray(mask) > 0, 2.0, 0.0).astype(np.float32)   # 0 = invalid
    random.seed(3)
    i2, m2, d2 = apply_pipeline([RandomResize((240, 180), (0.5, 2.0)), RandomRotate(1.0, 30), RandomFlip(1.0)], img, mask, d.view(ArrayDepth))
    d2, m2 = np.asarray(d2), np.asarray(m2)
    assert set(np.unique(d2).tolist()) <= {0.0, 2.0}
    assert ((d2 == 2.0) == ((m2 > 0) & (m2 != 255))).mean() > 0.999

def test_in_a_fastai_datablock(tmp_path):
    from PIL import Image
    from fastai.data.transforms import FuncSplitter
    for i in range(4):
        img, mask = scene(seed=i)
        Image.fromarray(np.asarray(img)).save(tmp_path / f"{i}.png"); Image.fromarray(np.asarray(mask)).save(tmp_path / f"{i}_mask.png")
    meta = SegMeta(["bg", "r", "g", "b"])
    db = SegDataBlock(meta, get_items=lambda p: sorted(q for q in p.glob("*.png") if "mask" not in q.name),
                      get_y=lambda p: p.parent / f"{p.stem}_mask.png", splitter=FuncSplitter(lambda p: p.stem == "3"),
                      item_tfms=[{"type": "RandomResize", "scale": [160, 120], "ratio_range": [0.8, 1.5]},
                                 {"type": "RandomCrop", "crop_size": [48, 48]}, {"type": "RandomFlip", "prob": 0.5}])
    dls = db.dataloaders(tmp_path, bs=3, num_workers=0)
    x, y = dls.one_batch()
    assert isinstance(x, TensorImage) and isinstance(y, TensorMask) and x.shape == (3, 3, 48, 48) and y.shape == (3, 48, 48)
    pal = torch.tensor(PAL[:4], dtype=torch.float32) / 255
    exp = pal[y.as_subclass(torch.Tensor)].permute(0, 3, 1, 2)
    assert ((x.as_subclass(torch.Tensor) - exp).abs() < 0.2).float().mean() > 0.9
