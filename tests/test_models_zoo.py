"""Model zoo: every YAML config builds at full size (on the meta device) with MMSeg's parameter counts; every
registered decode head trains and predicts inside a segmentor on a tiny backbone; slide == whole when one window
covers the image; flip TTA of a mirror-symmetric image is mirror-symmetric; `from_name` covers every algorithm."""
from pathlib import Path
import pytest
import torch
import segnb
from segnb.config import Config
from segnb.registry import HEADS, MODELS
from segnb.models.backbones import ResNetV1c, VisionTransformer
from segnb.models.segmentor import EncoderDecoder, CascadeEncoderDecoder, ALGORITHMS, from_name

import re
ALL_CONFIGS = sorted((Path(segnb.__file__).parent / "configs").glob("*.yaml"))
# the model zoo: MMSeg-style names {algo}_{backbone}_{schedule}_{dataset}-{crop}; other configs (demos, depth) build too
CONFIGS = [p for p in ALL_CONFIGS if re.fullmatch(r"[a-z0-9+]+_[a-z0-9.\-_]+_\d+k_[a-z0-9]+-\d+x\d+", p.stem)]

# Parameter counts of the same configs built by MMSegmentation 1.2.2 (decode + auxiliary heads included;
# SyncBN -> BN, counted in the peers venv with `sum(p.numel() for p in model.parameters())`).
MMSEG_PARAMS = {
    "fcn_r50-d8_80k_cityscapes-512x1024": 49_497_734, "pspnet_r50-d8_80k_cityscapes-512x1024": 48_975_494,
    "deeplabv3_r50-d8_80k_cityscapes-512x1024": 68_113_030, "deeplabv3plus_r50-d8_80k_cityscapes-512x1024": 43_589_878,
    "fpn_r50_80k_cityscapes-512x1024": 28_497_907, "fcn_r50-d8_80k_ade20k-512x512": 49_598_604,
    "pspnet_r50-d8_80k_ade20k-512x512": 49_076_364, "deeplabv3plus_r50-d8_80k_ade20k-512x512": 43_690_748,
    "upernet_r50_80k_ade20k-512x512": 66_516_108, "pspnet_r50-d8_20k_voc12aug-512x512": 48_977_034,
    "deeplabv3plus_r50-d8_40k_voc12aug-512x512": 43_591_418, "ocrnet_r101-d8_80k_cityscapes-512x1024": 55_516_294,
    "segformer_mit-b0_160k_ade20k-512x512": 3_753_718,
    # timm's ViT has a bias in the patch-embedding conv (MMSeg's does not): + embed_dims parameters
    "setr_vit-l_pup_160k_ade20k-512x512": 317_290_072 + 1024, "dpt_vit-b16_160k_ade20k-512x512": 109_704_278 + 768,
    "segmenter_vit-b16_mask_160k_ade20k-512x512": 102_496_812 + 768,
}
NO_META_FORWARD = {"maskformer_r50-d32_160k_ade20k-512x512"}   # Hungarian matching / point sampling ops have no meta kernels

def n_params(m): return sum(p.numel() for p in m.parameters())

def test_config_names_and_families():
    names = [p.stem for p in CONFIGS]
    for algo in ["fcn", "pspnet", "deeplabv3", "deeplabv3plus", "upernet", "segformer", "fpn", "lraspp", "ocrnet", "setr",
                 "dpt", "segmenter", "maskformer"]:
        assert any(n.startswith(algo + "_") for n in names), f"no config for {algo}"
    assert len(names) >= 18
    for s in ["20k", "40k", "80k", "160k"]: assert (CONFIGS[0].parent / "_base_" / "schedules" / f"schedule_{s}.yaml").is_file()

@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_full_size(path):
    cfg = Config.fromfile(path)
    for key in ("model", "data", "optimizer", "schedule", "metrics", "callbacks", "work_dir", "seed"):
        assert key in cfg, f"{path.name} has no {key!r}"
    assert cfg.work_dir.endswith(path.stem)
    assert cfg.schedule.max_iters % cfg.schedule.val_interval == 0
    from segnb.registry import CALLBACKS, DATASETS
    for c in cfg.callbacks: CALLBACKS.build(c)             # the training callbacks exist with these arguments
    assert cfg.data.dataset.type in DATASETS
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
        if path.stem not in NO_META_FORWARD:    # shapes flow through every layer at full size, no compute
            model.test_cfg["mode"] = "whole"
            n_cls = model.num_classes
            assert model.eval()(torch.empty(1, 3, 64, 96)).shape == (1, n_cls, 64, 96)
            out = model.train()(torch.empty(2, 3, 64, 96))
            assert all(o.shape[:2] == (2, n_cls) for o in (out if isinstance(out, tuple) else [out]))
    if path.stem in MMSEG_PARAMS: assert n_params(model) == MMSEG_PARAMS[path.stem]
    nc = {"cityscapes": 19, "ade20k": 150, "voc12aug": 21}[path.stem.rsplit("_", 1)[1].split("-")[0]]
    assert model.num_classes == nc

@pytest.mark.parametrize("path", [p for p in ALL_CONFIGS if p not in CONFIGS], ids=lambda p: p.stem)
def test_other_configs_build(path):
    cfg = Config.fromfile(path)
    try:
        try:
            with torch.device("meta"): model = MODELS.build(cfg.model)
        except RuntimeError as e:            # parts that load real weights (e.g. a local text encoder) refuse the meta device
            if "meta" not in str(e): raise
            model = MODELS.build(cfg.model)
    except RuntimeError as e:                # open-vocabulary configs whose CLIP weights open_clip downloads (offline here)
        if "could not load open_clip" not in str(e): raise
        # the same architecture with random CLIP weights; the real weight-loading path is tested in test_clip.py
        for part in (cfg.model.get("backbone"), cfg.model.get("text_encoder")):
            if part is not None and "pretrained" in part: part["pretrained"] = None
        model = MODELS.build(cfg.model)
    assert n_params(model) > 0

def test_small_configs_run_for_real():
    cfg = Config.fromfile(CONFIGS[0].parent / "segformer_mit-b0_160k_ade20k-512x512.yaml")
    m = MODELS.build(cfg.model).eval()
    with torch.inference_mode(): assert m(torch.randn(1, 3, 64, 80)).shape == (1, 150, 64, 80)
    cfg = Config.fromfile(CONFIGS[0].parent / "lraspp_m-v3-d8_320k_cityscapes-512x1024.yaml")
    m = MODELS.build(cfg.model).eval()
    assert m.backbone.out_strides == [2, 4, 8] and m.backbone.out_channels == [16, 24, 960]
    with torch.inference_mode(): assert m(torch.randn(1, 3, 64, 80)).shape == (1, 19, 64, 80)

# ---------------------------------------------------------------- every head on a tiny backbone
NC = 3
def cnn(): return ResNetV1c(18, stem_channels=16, base_channels=8)                  # channels 8,16,32,64; strides 4..32
def vit(**kw): return VisionTransformer("test_vit", out_indices=(1, 3, 4, 5), img_size=64, **kw)   # 64 channels, stride 16

def _ed(backbone, head, **kw): return EncoderDecoder(backbone, dict(num_classes=NC, **head), **kw)
C = [8, 16, 32, 64]
TINY = {
    "FCNHead": lambda: _ed(cnn(), dict(type="FCNHead", in_channels=64, in_index=3, channels=16, num_convs=2, concat_input=True),
                           auxiliary_head=dict(type="FCNHead", in_channels=32, in_index=2, channels=8, num_convs=1, num_classes=NC,
                                               loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4))),
    "PSPHead": lambda: _ed(cnn(), dict(type="PSPHead", in_channels=64, in_index=3, channels=16)),
    "ASPPHead": lambda: _ed(cnn(), dict(type="ASPPHead", in_channels=64, in_index=3, channels=16, dilations=(1, 2, 3, 4))),
    "DepthwiseSeparableASPPHead": lambda: _ed(cnn(), dict(type="DepthwiseSeparableASPPHead", in_channels=64, in_index=3, channels=16,
                                                          dilations=(1, 2, 3, 4), c1_in_channels=8, c1_channels=8)),
    "UPerHead": lambda: _ed(cnn(), dict(type="UPerHead", in_channels=C, in_index=[0, 1, 2, 3], channels=16)),
    "SegformerHead": lambda: _ed(cnn(), dict(type="SegformerHead", in_channels=C, in_index=[0, 1, 2, 3], channels=16)),
    "FPNHead": lambda: _ed(cnn(), dict(type="FPNHead", in_channels=[16] * 4, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32],
                                       channels=16), neck=dict(type="FPN", in_channels=C, out_channels=16, num_outs=4)),
    "LRASPPHead": lambda: _ed(cnn(), dict(type="LRASPPHead", in_channels=[8, 16, 64], in_index=[0, 1, 3], channels=16,
                                          branch_channels=(8, 8))),
    "OCRHead": lambda: CascadeEncoderDecoder(2, cnn(), [
        dict(type="FCNHead", in_channels=32, in_index=2, channels=16, num_convs=1, concat_input=False, num_classes=NC,
             loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4)),
        dict(type="OCRHead", in_channels=64, in_index=3, channels=16, ocr_channels=8, num_classes=NC)]),
    "SETRUPHead": lambda: _ed(vit(), dict(type="SETRUPHead", in_channels=64, in_index=3, channels=16, num_convs=2, up_scale=2),
                              auxiliary_head=[dict(type="SETRUPHead", in_channels=64, in_index=1, channels=16, num_convs=1, up_scale=4,
                                                   num_classes=NC, loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4))]),
    "DPTHead": lambda: _ed(vit(output_cls_token=True), dict(type="DPTHead", in_channels=[64] * 4, in_index=[0, 1, 2, 3], channels=16,
                                                            embed_dims=64, post_process_channels=[8, 16, 32, 64], readout_type="project")),
    "SegmenterMaskTransformerHead": lambda: EncoderDecoder(
        VisionTransformer("test_vit", out_indices=(5,), final_norm=True, img_size=64),
        dict(type="SegmenterMaskTransformerHead", in_channels=64, channels=64, num_classes=NC, num_layers=1, num_heads=2, embed_dims=64)),
    "MaskFormerHead": lambda: _ed(cnn(), dict(type="MaskFormerHead", in_channels=C, in_index=[0, 1, 2, 3], feat_channels=16,
                                              mask_channels=16, num_queries=6, num_layers=2, num_heads=2, ffn_channels=32, num_points=256)),
    "Mask2FormerHead": lambda: _ed(cnn(), dict(type="Mask2FormerHead", in_channels=C, in_index=[0, 1, 2, 3], feat_channels=16,
                                               mask_channels=16, num_queries=6, num_layers=3, num_heads=2, ffn_channels=32,
                                               num_transformer_feat_level=3, num_points=256)),
}
SEG_HEADS = [n for n in HEADS.list() if HEADS.get(n).__module__ in ("segnb.models.heads", "segnb.models.heads_transformer")]

def test_every_registered_head_has_a_tiny_setting():
    missing = sorted(set(SEG_HEADS) - set(TINY))
    assert not missing, f"add a tiny setting for {missing} to TINY in tests/test_models_zoo.py"

@pytest.mark.parametrize("head", sorted(TINY))
def test_head_trains_and_predicts_in_a_segmentor(head):
    torch.manual_seed(0)
    model = TINY[head]()
    for size in [(64, 64), (70, 90)]:                       # 70x90: not divisible by 32
        x = torch.randn(2, 3, *size)
        y = torch.randint(0, NC, (2, *size)); y[:, :4] = 255
        model.train()
        out = model(x)
        loss = model.loss(out, y)
        assert torch.isfinite(loss) and loss > 0, (head, size, model.last_losses)
        assert any(k.startswith(("decode", "decode_")) for k in model.last_losses)
        loss.backward()
        grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.") and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{head}: no gradient reached the backbone"
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == (2, NC, *size) and torch.isfinite(logits).all(), (head, size, logits.shape)
        assert model.predict(x).shape == (2, *size)

@pytest.mark.parametrize("head", sorted(TINY))
def test_slide_equals_whole_and_flip_tta_is_symmetric(head):
    torch.manual_seed(0)
    model = TINY[head]().eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        whole = model(x)
        for crop in [(70, 90), (96, 128)]:                 # one window: exactly the image, or larger than it
            model.test_cfg.update(mode="slide", crop_size=crop, stride=(32, 32))
            torch.testing.assert_close(model(x), whole, rtol=1e-5, atol=1e-5)
        model.test_cfg.update(mode="whole")
        half = torch.randn(1, 3, 64, 40)
        sym = torch.cat([half, half.flip(-1)], -1)
        p = model.aug_test(sym, scales=[0.75, 1.0], flip=True)
    assert p.shape == (1, NC, 64, 80)
    torch.testing.assert_close(p, p.flip(-1), rtol=1e-5, atol=1e-5)

# ---------------------------------------------------------------- from_name
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_from_name_every_algorithm(algo):
    # default backbone, full size, on the meta device: wiring only
    with torch.device("meta"):
        m = from_name(algo, num_classes=150)
        if algo != "maskformer":
            assert m.eval()(torch.empty(1, 3, 64, 64)).shape == (1, 150, 64, 64)
    # a tiny real backbone: forward for real
    bb = vit(output_cls_token=algo == "dpt") if algo in ("setr", "dpt", "segmenter") else "test_resnet"
    kw = {"decode_head": dict(channels=16)}
    if algo == "dpt": kw["decode_head"].update(post_process_channels=[8, 16, 32, 64])
    if algo == "segmenter": kw = {"decode_head": dict(channels=64, num_heads=2)}
    if algo == "maskformer": kw = {"decode_head": dict(num_queries=4, num_layers=1, ffn_channels=32, feat_channels=16, mask_channels=16)}
    torch.manual_seed(0)
    m = from_name(algo, backbone=bb, num_classes=4, **kw).eval()
    with torch.no_grad(): assert m(torch.randn(1, 3, 64, 96)).shape == (1, 4, 64, 96)

def test_from_name_matches_mmseg_parameter_counts():
    with torch.device("meta"):
        assert n_params(from_name("deeplabv3plus", backbone="r50-d8", num_classes=19)) == 43_589_878
        assert n_params(from_name("pspnet", backbone="r50-d8", num_classes=150)) == 49_076_364
        assert n_params(from_name("fcn", backbone="r50-d8", num_classes=150)) == 49_598_604
        assert n_params(from_name("upernet", backbone="r50", num_classes=150)) == 66_516_108
        assert n_params(from_name("segformer", backbone="mit-b0", num_classes=150)) == 3_753_718
        assert n_params(from_name("ocrnet", backbone="r101-d8", num_classes=19)) == 55_516_294

def test_from_name_errors():
    with pytest.raises(ValueError, match="unknown algorithm"): from_name("unet++")
    with pytest.raises(ValueError, match="neither a segnb alias"): from_name("fcn", backbone="resnet_5O")
    with pytest.raises(ValueError, match="output_stride"): from_name("fcn", backbone="test_vit", output_stride=8)


@pytest.mark.parametrize("algo", ["dpt", "setr", "segmenter"])
def test_plain_vit_from_timm_gets_levels_spread_over_depth(algo):
    "A timm plain ViT by name gives 4 blocks spread over the depth (MMSeg's (2, 5, 8, 11) for 12 blocks), ending at the last."
    from segnb.models.segmentor import EncoderDecoder, _timm_levels
    assert _timm_levels("vit_base_patch16_224", 4) == [2, 5, 8, 11] and _timm_levels("test_vit", 4)[-1] == 5
    m = EncoderDecoder.from_name(algo, "test_vit", num_classes=3).eval()
    assert len(m.backbone.out_channels) == 4
    assert m.predict(torch.randn(1, 3, 48, 64)).shape == (1, 48, 64)
