#!/usr/bin/env python3
"""Cross-check segnb's decode heads against MMSegmentation 1.2.2: parameter counts, state_dict keys/shapes, and outputs.

For each head of MMSeg's `_base_` model configs (SyncBN -> BN), builds MMSeg's head and segnb's from the same config
dict, counts parameters for 19 and 150 classes, then gives MMSeg's head random weights and BN statistics, loads that
state_dict into segnb's head (strict) and compares eval-mode outputs on random features.

Run with the peers interpreter (see /work/shared/bench/README.md), from anywhere:
    ~/peers/litevenv/bin/python benchmarks/crosscheck_heads_mmseg.py
segnb is imported from this checkout, its other dependencies (timm, scipy, ...) from the checkout's .venv (appended to
sys.path, so torch stays the peers venv's). MaskFormer/Mask2Former are not compared: MMSeg's wrap mmdet heads
(and a deformable-attention pixel decoder) that segnb does not reproduce layer for layer.
"""
import contextlib, copy, glob, io, os, sys, types
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path += glob.glob(str(ROOT / ".venv/lib/python3*/site-packages"))
from segnb.benchmark import stub_mmcv_ext, strip_mmseg_cfg  # noqa: E402  (torch + stdlib only: importable under the peers' python too)
stub_mmcv_ext()   # mmcv-lite: mmseg imports mmcv.ops at import time; no op is called here
import warnings; warnings.filterwarnings("ignore")
import torch
import mmseg
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules
from segnb.registry import HEADS

CONFIGS = ["fcn_r50-d8", "pspnet_r50-d8", "deeplabv3_r50-d8", "deeplabv3plus_r50-d8", "upernet_r50", "segformer_mit-b0",
           "fpn_r50", "lraspp_m-v3-d8", "ocrnet_hr18", "ocrnet_r50-d8", "fcn_hr18", "setr_naive", "setr_pup", "dpt_vit-b16",
           "segmenter_vit-b16_mask"]


def heads_of(name):
    root = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", "_base_", "models")
    m = Config.fromfile(os.path.join(root, name + ".py")).model.to_dict()
    dh, ah = m["decode_head"], m.get("auxiliary_head") or []
    dh, ah = (dh if isinstance(dh, list) else [dh]), (ah if isinstance(ah, list) else [ah])
    return [(f"decode{i}" if len(dh) > 1 else "decode", strip_mmseg_cfg(copy.deepcopy(h))) for i, h in enumerate(dh)] + \
           [(f"aux{i}", strip_mmseg_cfg(copy.deepcopy(h))) for i, h in enumerate(ah)]


def features(cfg, B=2, g=None):
    "Random inputs with the channels the head reads (other levels: 8 channels)."
    idx, ch = cfg.get("in_index", -1), cfg["in_channels"]
    idx = list(idx) if isinstance(idx, (list, tuple)) else [idx]
    ch = list(ch) if isinstance(ch, (list, tuple)) else [ch]
    t = cfg["type"]
    n = 3 if t == "LRASPPHead" else 4
    chans = [8] * n
    for i, c in zip(idx, ch): chans[i] = c
    if t == "DepthwiseSeparableASPPHead": chans[0] = cfg["c1_in_channels"]
    sizes = [104, 52, 52] if t == "LRASPPHead" else [8] * 4 if t in ("DPTHead", "SegmenterMaskTransformerHead", "SETRUPHead") else [16, 8, 4, 4]
    xs = [torch.randn(B, chans[i], sizes[i], sizes[i] + 2, generator=g) for i in range(n)]
    return [[x, torch.randn(B, x.shape[1], generator=g)] for x in xs] if t == "DPTHead" else xs


def n_params(m): return sum(p.numel() for p in m.parameters())


def main():
    torch.set_num_threads(1)
    register_all_modules(init_default_scope=True)
    print(f"{'config':24s} {'head':7s} {'type':30s} {'classes':>7s} {'MMSeg':>11s} {'segnb':>11s}  state_dict  max|out diff| (max|out|)")
    ok = True
    for name in CONFIGS:
        prev = {}
        for tag, cfg in heads_of(name):
            for nc in (19, 150):
                c = {**cfg, "num_classes": nc}
                with contextlib.redirect_stdout(io.StringIO()): mm = MODELS.build(copy.deepcopy(c))
                sn = HEADS.build(copy.deepcopy(c))
                same_sd = {k: v.shape for k, v in mm.state_dict().items()} == {k: v.shape for k, v in sn.state_dict().items()}
                diff = ""
                if nc == 150:
                    g = torch.Generator().manual_seed(0)
                    with torch.no_grad():
                        for k, v in mm.state_dict().items():
                            if v.dtype.is_floating_point:
                                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
                                if k.endswith("running_var"): v.abs_().add_(1.0)
                    sn.load_state_dict(mm.state_dict(), strict=True)
                    mm.eval(); sn.eval()
                    xs = features(c, g=g)
                    with torch.no_grad():
                        if c["type"] == "OCRHead":
                            p = prev["out"]
                            a, b = mm(xs, p), sn(xs, p)
                        else: a, b = mm(xs), sn(xs)
                    prev = {"out": a}
                    d = (a - b).abs().max().item() / max(a.abs().max().item(), 1e-12)
                    diff = f"{(a - b).abs().max().item():.1e} ({a.abs().max().item():.1e})"
                    ok &= d < 1e-4   # relative to the largest output (float32 rounding)
                ok &= same_sd and n_params(mm) == n_params(sn)
                print(f"{name:24s} {tag:7s} {c['type']:30s} {nc:7d} {n_params(mm):11,d} {n_params(sn):11,d}  "
                      f"{'same' if same_sd else 'DIFFERS':10s}  {diff}")
    print("all equal" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
