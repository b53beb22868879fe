"Decode heads: every registered head runs forward + backward on tiny feature pyramids, losses, binary heads, OCR cascade, matching, MMSeg parity."
import itertools, math
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from segnb.registry import HEADS, LOSSES
from segnb.models import heads as H
from segnb.models import heads_transformer as HT

B, NC = 2, 5
CONV_CH, CONV_STRIDES = [8, 16, 32, 64], [4, 8, 16, 32]
VIT_CH, VIT_STRIDE = 32, 16
SIZES = [(64, 64), (72, 88)]   # the second is not divisible by 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors: thread start-up costs more than the work, and the test machines are shared
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def loss_ce(logits, target): return F.cross_entropy(logits, target, ignore_index=255)


def conv_feats(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, c, math.ceil(h / s), math.ceil(w / s), generator=g) for c, s in zip(CONV_CH, CONV_STRIDES)]


def vit_feats(h, w, cls_token=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hh, ww = math.ceil(h / VIT_STRIDE), math.ceil(w / VIT_STRIDE)
    fs = [torch.randn(B, VIT_CH, hh, ww, generator=g) for _ in range(4)]
    return [(f, torch.randn(B, VIT_CH, generator=g)) for f in fs] if cls_token else fs


def labels(h, w, seed=0, n=NC):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n, (B, h, w), generator=g)
    y[:, : h // 8] = 255
    return y


vit = dict(in_channels=VIT_CH)
# name -> (config, input kind)
CASES = {
    "FCNHead": (dict(in_channels=64, channels=16), "conv"),
    "PSPHead": (dict(in_channels=64, channels=16, pool_scales=(1, 2, 3, 6)), "conv"),
    "ASPPHead": (dict(in_channels=64, channels=16, dilations=(1, 2, 3, 4)), "conv"),
    "DepthwiseSeparableASPPHead": (dict(in_channels=64, channels=16, dilations=(1, 2, 3), c1_in_channels=8, c1_channels=4), "conv"),
    "UPerHead": (dict(in_channels=CONV_CH, channels=16), "conv"),
    "SegformerHead": (dict(in_channels=CONV_CH, channels=16), "conv"),
    "FPNHead": (dict(in_channels=CONV_CH, feature_strides=CONV_STRIDES, channels=16), "conv"),
    "LRASPPHead": (dict(in_channels=[8, 16, 64], in_index=[0, 1, 3], branch_channels=(4, 8), channels=16), "conv"),
    "OCRHead": (dict(in_channels=CONV_CH, in_index=[0, 1, 2, 3], input_transform="resize_concat", channels=16, ocr_channels=8), "cascade"),
    "SETRUPHead": (dict(**vit, channels=16, in_index=3, num_convs=2, up_scale=2), "vit"),
    "DPTHead": (dict(in_channels=[VIT_CH] * 4, embed_dims=VIT_CH, post_process_channels=[8, 16, 32, 32], channels=16,
                     readout_type="project"), "vit_cls"),
    "SegmenterMaskTransformerHead": (dict(**vit, num_layers=1, num_heads=2, embed_dims=16), "vit"),
    "MaskFormerHead": (dict(in_channels=CONV_CH, feat_channels=16, mask_channels=16, num_queries=6, num_heads=2, ffn_channels=32,
                            num_layers=2, num_points=128), "conv"),
    "Mask2FormerHead": (dict(in_channels=CONV_CH, feat_channels=16, mask_channels=16, num_queries=6, num_heads=2, ffn_channels=32,
                             num_layers=3, num_points=128), "conv"),
}


def build(name, **kw):
    cfg, _ = CASES[name]
    return HEADS.build({"type": name, **cfg, "num_classes": NC, **kw})


def run_head(head, kind, h, w):
    if kind == "vit": return head(vit_feats(h, w))
    if kind == "vit_cls": return head(vit_feats(h, w, cls_token=True))
    feats = conv_feats(h, w)
    if kind == "cascade":
        prev = torch.randn(B, NC, feats[0].shape[2], feats[0].shape[3])
        return head(feats, prev)
    return head(feats)


def test_every_registered_head_is_covered():
    ours = {n for n in HEADS.list() if HEADS.get(n).__module__ in (H.__name__, HT.__name__)}
    assert ours == set(CASES), f"heads without a test case: {ours - set(CASES)}; stale cases: {set(CASES) - ours}"


@pytest.mark.parametrize("name", list(CASES))
def test_head_forward_backward(name):
    torch.manual_seed(0)
    head = build(name, loss_decode=loss_ce) if name not in ("MaskFormerHead", "Mask2FormerHead") else build(name)
    kind = CASES[name][1]
    for h, w in SIZES:
        head.train(); head.zero_grad()
        logits = run_head(head, kind, h, w)
        assert logits.ndim == 4 and logits.shape[:2] == (B, NC), logits.shape
        assert torch.isfinite(logits).all()
        up = head.predict_by_feat(logits, (h, w))
        assert up.shape == (B, NC, h, w)
        losses = head.loss_by_feat(logits, labels(h, w))
        assert "acc_seg" in losses and 0 <= losses["acc_seg"].item() <= 100
        total = sum(v for k, v in losses.items() if k.startswith("loss"))
        assert torch.isfinite(total)
        total.backward()
        no_grad = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"
        head.eval()
        with torch.no_grad():
            assert run_head(head, kind, h, w).shape[:2] == (B, NC)


def test_loss_by_feat_ignores_ignore_index():
    torch.manual_seed(0)
    head = build("FCNHead", loss_decode=loss_ce).eval()
    feats, y = conv_feats(64, 64), labels(64, 64)
    logits = head(feats)
    out = head.loss_by_feat(logits, y)
    up = F.interpolate(logits, (64, 64), mode="bilinear", align_corners=False)
    v = y != 255
    assert torch.allclose(out["loss_ce"], F.cross_entropy(up.permute(0, 2, 3, 1)[v], y[v]), atol=1e-5)
    assert torch.allclose(out["acc_seg"], (up.argmax(1)[v] == y[v]).float().mean() * 100, atol=1e-3)
    # changing only the ignored pixels' logits changes nothing
    y2 = y.clone(); y2[~v] = 255
    assert torch.allclose(head.loss_by_feat(logits, y2)["loss_ce"], out["loss_ce"])
    # every pixel ignored: finite, zero accuracy, still differentiable
    allign = head.train().loss_by_feat(head(feats), torch.full_like(y, 255))
    assert all(torch.isfinite(t) for t in allign.values()) and allign["acc_seg"].item() == 0
    allign["loss_ce"].backward()


def test_head_ignore_index_reaches_losses():
    seen = {}
    def loss_spy(logits, target, weight=None, ignore_index=255):
        seen["ignore_index"] = ignore_index
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    head = build("FCNHead", loss_decode=loss_spy, ignore_index=0)
    y = labels(64, 64); y[y == 255] = 1
    out = head.loss_by_feat(head(conv_feats(64, 64)), y)
    assert seen["ignore_index"] == 0 and "loss_spy" in out
    if "CrossEntropyLoss" in LOSSES:
        h2 = build("FCNHead", ignore_index=7)
        assert h2.losses[0].ignore_index == 7


@pytest.mark.skipif("CrossEntropyLoss" not in LOSSES, reason="segnb.losses not installed")
def test_losses_from_registry():
    head = build("FCNHead", loss_decode=[dict(type="CrossEntropyLoss", loss_weight=1.0), dict(type="DiceLoss", loss_weight=3.0),
                                         dict(type="CrossEntropyLoss", loss_weight=0.5)])
    feats, y = conv_feats(64, 64), labels(64, 64)
    logits = head(feats)
    out = head.loss_by_feat(logits, y)
    assert set(out) == {"loss_ce", "loss_dice", "acc_seg"}
    one = build("FCNHead")
    one.load_state_dict(head.state_dict())
    # two losses with the same name are summed: 1.0 + 0.5 times the CE
    assert torch.allclose(out["loss_ce"], one.loss_by_feat(logits, y)["loss_ce"] * 1.5, atol=1e-5)
    allign = head.loss_by_feat(logits, torch.full_like(y, 255))
    assert all(torch.isfinite(t) for t in allign.values())


def test_fastai_mask_labels():
    fastai = pytest.importorskip("fastai.torch_core")
    head = build("FCNHead", loss_decode=loss_ce)
    y = labels(64, 64)
    out = head.loss_by_feat(head(conv_feats(64, 64)), fastai.TensorMask(y))
    assert torch.isfinite(out["loss_ce"])


def test_binary_head_thresholds():
    head = build("FCNHead", num_classes=2, out_channels=1, threshold=0.7,
                 loss_decode=lambda x, t: F.binary_cross_entropy_with_logits(x[:, 0], (t == 1).float()))
    logits = head(conv_feats(64, 64))
    assert logits.shape[1] == 1
    assert head.predict_by_feat(logits, (64, 64)).shape == (B, 1, 64, 64)
    x = torch.tensor([[[[0.0, 0.5, 1.0, 2.0]]]])        # sigmoid: 0.5, 0.62, 0.73, 0.88
    assert head.logits_to_seg(x).tolist() == [[[0, 0, 1, 1]]]
    head.threshold = 0.5
    assert head.logits_to_seg(x).tolist() == [[[0, 1, 1, 1]]]
    y = (labels(64, 64) % 2)
    out = head.loss_by_feat(logits, y)
    assert torch.isfinite(out["loss_lambda"]) and 0 <= out["acc_seg"] <= 100
    assert build("FCNHead", num_classes=2, out_channels=1, loss_decode=loss_ce).threshold == 0.5
    with pytest.raises(ValueError, match="out_channels"):
        build("FCNHead", out_channels=3)


@pytest.mark.skipif("CrossEntropyLoss" not in LOSSES, reason="segnb.losses not installed")
def test_binary_head_default_loss_is_sigmoid_ce():
    head = build("FCNHead", num_classes=2, out_channels=1)
    out = head.loss_by_feat(head(conv_feats(64, 64)), labels(64, 64) % 2)
    assert torch.isfinite(out["loss_ce"])


def test_ocr_cascade():
    torch.manual_seed(0)
    stage1 = HEADS.build(dict(type="FCNHead", in_channels=CONV_CH, in_index=[0, 1, 2, 3], input_transform="resize_concat",
                              channels=sum(CONV_CH), kernel_size=1, num_convs=1, concat_input=False, dropout_ratio=-1,
                              num_classes=NC, loss_decode=lambda x, t: F.cross_entropy(x, t, ignore_index=255) * 0.4))
    ocr = build("OCRHead", loss_decode=loss_ce)
    for h, w in SIZES:
        feats, y = conv_feats(h, w), labels(h, w)
        prev = stage1(feats)
        out = ocr(feats, prev)
        assert out.shape == prev.shape == (B, NC, math.ceil(h / 4), math.ceil(w / 4))
        total = stage1.loss_by_feat(prev, y)["loss_lambda"] + ocr.loss_by_feat(out, y)["loss_ce"]
        total.backward()
        assert stage1.conv_seg.weight.grad is not None and ocr.conv_seg.weight.grad is not None
        assert ocr.predict(feats, prev, (h, w)).shape == (B, NC, h, w)
    with pytest.raises(NotImplementedError):
        H.BaseCascadeDecodeHead(in_channels=8, channels=8, num_classes=2, loss_decode=loss_ce)(feats, prev)


def test_hungarian_matching_known_and_optimal():
    gt_masks = torch.tensor([[1., 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
    gt_labels = torch.tensor([2, 0, 1])
    cls = torch.full((4, 4), -5.); mask = torch.full((4, 5), -8.)
    # query 3 -> gt 0 (class 2), query 0 -> gt 1 (class 0), query 1 -> gt 2 (class 1), query 2 predicts nothing
    cls[3, 2] = cls[0, 0] = cls[1, 1] = 5; cls[2, 3] = 5
    mask[3, :2] = mask[0, 2:4] = mask[1, 4] = 8
    q, g = HT.hungarian_match(cls, mask, gt_labels, gt_masks)
    assert dict(zip(g.tolist(), q.tolist())) == {0: 3, 1: 0, 2: 1}
    # an invalid point does not pull the matching: gt 1 disagrees with query 0 only on an ignored point
    mask2 = mask.clone(); mask2[0, 0] = 8
    valid = torch.tensor([0., 1, 1, 1, 1])
    q, g = HT.hungarian_match(cls, mask2, gt_labels, gt_masks, valid)
    assert dict(zip(g.tolist(), q.tolist())) == {0: 3, 1: 0, 2: 1}
    # random case: equals the brute-force optimum
    torch.manual_seed(3)
    cl, ml, gm, gl = torch.randn(6, 4), torch.randn(6, 30), (torch.rand(3, 30) > 0.5).float(), torch.tensor([1, 0, 2])
    q, g = HT.hungarian_match(cl, ml, gl, gm, cls_weight=1.0, mask_weight=2.0, dice_weight=3.0)
    bce, dice = HT.mask_costs(ml, gm)
    C = -cl.softmax(-1)[:, gl] + 2 * bce + 3 * dice
    best = min(sum(C[p[j], j] for j in range(3)) for p in itertools.permutations(range(6), 3))
    assert torch.allclose(C[q, g].sum(), best, atol=1e-5)
    e = HT.hungarian_match(cl, ml, gl[:0], gm[:0])
    assert len(e[0]) == len(e[1]) == 0


def test_mask2former_training_signal_and_semantic_output():
    torch.manual_seed(0)
    head = build("Mask2FormerHead")
    feats, y = conv_feats(64, 64), labels(64, 64)
    out = head(feats)
    assert len(out.cls_scores) == len(out.mask_preds) == 4 and out.cls_scores[-1].shape == (B, 6, NC + 1)
    l = head.loss_by_feat(out, y)
    assert set(l) == {"loss_cls", "loss_mask", "loss_dice", "acc_seg"}
    # with an all-ignored label, every query is pushed to "no object" and the mask losses are zero
    l0 = head.loss_by_feat(head(feats), torch.full_like(y, 255))
    assert l0["loss_mask"].item() == 0 and l0["loss_dice"].item() == 0 and torch.isfinite(l0["loss_cls"])
    # a rebuilt (cast) tensor still finds this head's last training outputs
    out = head(feats)
    assert torch.isfinite(head.loss_by_feat(out.clone(), y)["loss_cls"])
    with pytest.raises(ValueError, match="training mode"):
        head.loss_by_feat(out.clone(), y)
    import copy, pickle
    head(feats); copy.deepcopy(head); pickle.dumps(head)    # pending outputs are not copied
    head.eval()
    with torch.no_grad(): s = head(feats)
    assert s.shape == (B, NC, 16, 16) and not hasattr(s, "cls_scores") and (s >= 0).all()
    with pytest.raises(ValueError, match="out_channels"):
        build("Mask2FormerHead", out_channels=1)


def test_a_few_steps_of_training_reduce_the_loss():
    torch.manual_seed(0)
    feats = conv_feats(32, 32)
    # labels constant on 4x4 blocks: learnable from the stride-4 features
    y = F.interpolate(torch.randint(0, 3, (B, 1, 8, 8)).float(), (32, 32), mode="nearest")[:, 0].long()
    for name, lr in [("SegformerHead", 3e-2), ("Mask2FormerHead", 1e-2)]:
        head = build(name, num_classes=3) if name == "Mask2FormerHead" else build(name, num_classes=3, loss_decode=loss_ce)
        opt = torch.optim.AdamW(head.parameters(), lr=lr)
        first = None
        for _ in range(15):
            l = head.loss_by_feat(head(feats), y)
            total = sum(v for k, v in l.items() if k.startswith("loss"))
            opt.zero_grad(); total.backward(); opt.step()
            first = first if first is not None else total.item()
        assert total.item() < 0.8 * first, (name, first, total.item())


@pytest.mark.skipif("OHEMPixelSampler" not in LOSSES, reason="segnb.losses has no OHEMPixelSampler")
def test_ohem_sampler():
    torch.manual_seed(0)
    seen = {}
    def loss_w(logits, target, weight=None):
        seen["w"] = weight
        l = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
        return (l * weight).sum() / weight.sum().clamp(min=1)
    head = build("FCNHead", loss_decode=loss_w, sampler=dict(type="OHEMPixelSampler", thresh=0.7, min_kept=10))
    y = labels(32, 32)
    head.loss_by_feat(head(conv_feats(32, 32)), y)
    w = seen["w"]
    assert w.shape == y.shape and (w[y == 255] == 0).all() and w.sum() >= 1
    assert head.sampler.context is head
    if "CrossEntropyLoss" in LOSSES:
        h2 = build("FCNHead", sampler=dict(type="OHEMPixelSampler", min_kept=50))
        out = h2.loss_by_feat(h2(conv_feats(32, 32)), y)
        assert torch.isfinite(out["loss_ce"])


def test_syncbn_config_on_one_device():
    head = build("UPerHead", norm_cfg=dict(type="SyncBN", requires_grad=True), loss_decode=loss_ce)
    assert any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in head.modules())
    head(conv_feats(64, 64)).sum().backward()
    gn = build("FCNHead", norm_cfg=dict(type="GN", num_groups=4), loss_decode=loss_ce)
    assert isinstance(gn.convs[0].gn, nn.GroupNorm) and gn.convs[0].conv.bias is None


def test_bad_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="input_transform"):
        build("FCNHead", in_channels=[8, 16])
    with pytest.raises(ValueError, match="in_channels"):
        build("FCNHead", in_channels=32, loss_decode=loss_ce)(conv_feats(64, 64))
    with pytest.raises(IndexError, match="4 feature maps"):
        build("FCNHead", in_index=6, loss_decode=loss_ce)(conv_feats(64, 64))
    with pytest.raises(ValueError, match="feature_strides"):
        build("FPNHead", feature_strides=[4, 8])
    with pytest.raises(ValueError, match="output_cls_token"):
        build("DPTHead", loss_decode=loss_ce)(vit_feats(64, 64))
    with pytest.raises(ValueError, match="labels must be"):
        build("FCNHead", loss_decode=loss_ce).loss_by_feat(torch.randn(B, NC, 4, 4), torch.zeros(B, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="norm_cfg type"):
        build("FCNHead", norm_cfg=dict(type="BatchNormz"))
    with pytest.raises(KeyError, match="LOSSES"):
        build("FCNHead", loss_decode=dict(type="CrossEntropyLos"))


def test_losses_built_lazily_when_the_losses_module_is_missing(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "segnb.losses" else real(n, *a))
    head = build("FCNHead", loss_decode=dict(type="NotYetALoss"))       # no error at construction
    assert len(head.loss_decode) == 0
    with pytest.raises(ModuleNotFoundError, match="segnb.losses"):
        head.loss_by_feat(head(conv_feats(64, 64)), labels(64, 64))


# MMSegmentation 1.2.2 parameter counts of the heads in its _base_ model configs (SyncBN -> BN),
# counted with mmseg itself (the segnb state_dict keys and shapes are the same as MMSeg's).
MMSEG = [
    ("fcn_r50-d8 decode", dict(type="FCNHead", in_channels=2048, in_index=3, channels=512, num_convs=2, concat_input=True), 150, 23672982),
    ("fcn_r50-d8 aux", dict(type="FCNHead", in_channels=1024, in_index=2, channels=256, num_convs=1, concat_input=False), 150, 2398358),
    ("pspnet_r50-d8", dict(type="PSPHead", in_channels=2048, in_index=3, channels=512, pool_scales=(1, 2, 3, 6)), 150, 23150742),
    ("deeplabv3_r50-d8", dict(type="ASPPHead", in_channels=2048, in_index=3, channels=512, dilations=(1, 12, 24, 36)), 150, 42288278),
    ("deeplabv3plus_r50-d8", dict(type="DepthwiseSeparableASPPHead", in_channels=2048, in_index=3, channels=512,
                                  dilations=(1, 12, 24, 36), c1_in_channels=256, c1_channels=48), 150, 17765126),
    ("deeplabv3plus_r50-d8 cityscapes", dict(type="DepthwiseSeparableASPPHead", in_channels=2048, in_index=3, channels=512,
                                             dilations=(1, 12, 24, 36), c1_in_channels=256, c1_channels=48), 19, 17697923),
    ("upernet_r50", dict(type="UPerHead", in_channels=[256, 512, 1024, 2048], in_index=[0, 1, 2, 3], channels=512), 150, 40590486),
    ("segformer_mit-b0", dict(type="SegformerHead", in_channels=[32, 64, 160, 256], in_index=[0, 1, 2, 3], channels=256), 150, 434326),
    ("fpn_r50", dict(type="FPNHead", in_channels=[256] * 4, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32], channels=128), 150, 1643158),
    ("lraspp_m-v3-d8", dict(type="LRASPPHead", in_channels=(16, 24, 960), in_index=(0, 1, 2), channels=128,
                            input_transform="multiple_select", norm_cfg=dict(type="BN", eps=0.001)), 150, 329494),
    ("ocrnet_hr18", dict(type="OCRHead", in_channels=[18, 36, 72, 144], in_index=(0, 1, 2, 3), input_transform="resize_concat",
                         channels=512, ocr_channels=256), 19, 2439187),
    ("setr_pup", dict(type="SETRUPHead", in_channels=1024, channels=256, in_index=3, num_convs=4, up_scale=2), 150, 4171414),
    ("dpt_vit-b16", dict(type="DPTHead", in_channels=(768,) * 4, channels=256, embed_dims=768, post_process_channels=[96, 192, 384, 768],
                         readout_type="project", input_transform="multiple_select", in_index=(0, 1, 2, 3)), 150, 23907926),
    ("segmenter_vit-b16", dict(type="SegmenterMaskTransformerHead", in_channels=768, channels=768, num_layers=2, num_heads=12,
                               embed_dims=768), 150, 16063020),
]


@pytest.mark.parametrize("name,cfg,nc,expected", MMSEG, ids=[m[0] for m in MMSEG])
def test_parameter_counts_match_mmseg(name, cfg, nc, expected):
    with torch.device("meta"):                 # no memory, no init: only the shapes
        head = HEADS.build({**cfg, "num_classes": nc, "loss_decode": loss_ce})
    assert sum(p.numel() for p in head.parameters()) == expected
