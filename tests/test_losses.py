"Losses checked against values computed independently (explicit formulas on tiny images, Python loops and sets)."
import json, math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segnb.losses import (CrossEntropyLoss, DiceLoss, FocalLoss, LovaszLoss, TverskyLoss, OhemCrossEntropy, OHEMPixelSampler,
                          BoundaryLoss, LossSum, build_losses, build_pixel_sampler, load_class_weight, mask_to_boundary, accuracy)
from segnb.registry import LOSSES

IGN = 255
# one image, 3 classes, 2x2; pixel (1,0) is ignored
LOGITS = torch.tensor([[[[2., 0.], [0., 1.]], [[0., 1.], [3., 0.]], [[0., 0.], [0., 2.]]]])
TARGET = torch.tensor([[[0, 1], [IGN, 2]]])
PIX = [((0, 0), 0), ((0, 1), 1), ((1, 1), 2)]  # valid pixels and their labels

def logits_at(i, j, x=LOGITS): return [float(x[0, c, i, j]) for c in range(x.shape[1])]
def softmax(v): e = [math.exp(a) for a in v]; s = sum(e); return [a / s for a in e]
def sig(a): return 1 / (1 + math.exp(-a))
def nll(i, j, y): return -math.log(softmax(logits_at(i, j))[y])

def close(a, b, tol=1e-6): assert abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b))), (float(a), float(b))

# ---------------------------------------------------------------- CrossEntropyLoss
def test_ce_softmax_averaging():
    s = sum(nll(i, j, y) for (i, j), y in PIX)
    close(CrossEntropyLoss()(LOGITS, TARGET), s / 4)                         # MMSeg default: all pixels
    close(CrossEntropyLoss(avg_non_ignore=True)(LOGITS, TARGET), s / 3)      # non-ignored
    close(CrossEntropyLoss(reduction="sum", loss_weight=2.0)(LOGITS, TARGET), 2 * s)
    none = CrossEntropyLoss(reduction="none")(LOGITS, TARGET)
    assert none.shape == (1, 2, 2) and float(none[0, 1, 0]) == 0

def test_ce_class_weight_and_pixel_weight():
    w = [1., 2., 3.]
    s = sum(w[y] * nll(i, j, y) for (i, j), y in PIX)
    close(CrossEntropyLoss(class_weight=w, avg_non_ignore=True)(LOGITS, TARGET), s / (1 + 2 + 3))
    close(CrossEntropyLoss(class_weight=w)(LOGITS, TARGET), s / (1 + 2 + 3 + 1))  # ignored pixel counts with weight 1
    pw = torch.tensor([[[0.5, 2.0], [7.0, 0.0]]])
    s2 = 0.5 * nll(0, 0, 0) + 2.0 * nll(0, 1, 1) + 0.0 * nll(1, 1, 2)
    close(CrossEntropyLoss(avg_non_ignore=True)(LOGITS, TARGET, weight=pw), s2 / 3)

def test_ce_label_smoothing():
    eps = 0.1
    s = 0.
    for (i, j), y in PIX:
        lp = [math.log(p) for p in softmax(logits_at(i, j))]
        s += -(1 - eps) * lp[y] - eps / 3 * sum(lp)
    close(CrossEntropyLoss(avg_non_ignore=True, label_smoothing=eps)(LOGITS, TARGET), s / 3)

def test_ce_sigmoid_binary_and_multiclass():
    x = torch.tensor([[[[0.5, -1.], [2., 0.]]]])
    t = torch.tensor([[[1, 0], [IGN, 1]]])
    bce = lambda a, y: math.log(1 + math.exp(a)) - y * a
    s = bce(0.5, 1) + bce(-1, 0) + bce(0., 1)
    close(CrossEntropyLoss(use_sigmoid=True)(x, t), s / 4)
    close(CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(x, t), s / 3)
    # pos_weight 3: positives' log-sigmoid term scaled
    bcew = lambda a, y, w: -(w * y * math.log(sig(a)) + (1 - y) * math.log(1 - sig(a)))
    close(CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True, class_weight=[3.])(x, t),
          (bcew(0.5, 1, 3) + bcew(-1, 0, 3) + bcew(0., 1, 3)) / 3)
    # three sigmoid channels against one-hot targets: mean over pixels x channels
    s3 = sum(bce(logits_at(i, j)[c], float(c == y)) for (i, j), y in PIX for c in range(3))
    close(CrossEntropyLoss(use_sigmoid=True)(LOGITS, TARGET), s3 / 12)
    close(CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(LOGITS, TARGET), s3 / 9)

def test_ce_bad_input():
    with pytest.raises(ValueError, match="label 5"): CrossEntropyLoss()(LOGITS, torch.tensor([[[0, 5], [1, 2]]]))
    with pytest.raises(ValueError, match="label 2"): CrossEntropyLoss(use_sigmoid=True)(LOGITS[:, :1], torch.tensor([[[0, 2], [1, 1]]]))
    with pytest.raises(ValueError, match="use_mask"): CrossEntropyLoss(use_mask=True)
    with pytest.raises(ValueError, match="reduction"): CrossEntropyLoss(reduction="avg")

# ---------------------------------------------------------------- class weights from files
def test_class_weight_files(tmp_path):
    np.save(tmp_path / "w.npy", np.array([1., 2., 3.]))
    (tmp_path / "w.txt").write_text("1 2\n3\n")
    (tmp_path / "w.csv").write_text("1,2,3")
    (tmp_path / "w.json").write_text(json.dumps([1, 2, 3]))
    (tmp_path / "w.yaml").write_text("[1, 2, 3]")
    for f in ["w.npy", "w.txt", "w.csv", "w.json", "w.yaml"]:
        assert load_class_weight(str(tmp_path / f)) == [1., 2., 3.], f
    ref = CrossEntropyLoss(class_weight=[1., 2., 3.], avg_non_ignore=True)(LOGITS, TARGET)
    close(CrossEntropyLoss(class_weight=str(tmp_path / "w.json"), avg_non_ignore=True)(LOGITS, TARGET), ref)
    with pytest.raises(FileNotFoundError, match="nope.npy"): CrossEntropyLoss(class_weight=str(tmp_path / "nope.npy"))
    (tmp_path / "w.pkl").write_text("x")
    with pytest.raises(ValueError, match="suffix"): load_class_weight(tmp_path / "w.pkl")
    with pytest.raises(ValueError, match=">= 0"): load_class_weight([1., -2.])

# ---------------------------------------------------------------- DiceLoss
def dice_ref(probs, labels, smooth=1.0, e=2, cw=None):
    "probs[pixel][c] over valid pixels only; per-class V-Net dice, mean over classes."
    C = len(probs[0]); out = 0.
    for c in range(C):
        inter = sum(p[c] * (y == c) for p, y in zip(probs, labels))
        den = sum(p[c] ** e for p in probs) + sum(1. for y in labels if y == c)
        out += (cw[c] if cw else 1.) * (1 - (2 * inter + smooth) / (den + smooth))
    return out / C

def test_dice():
    labels = [y for _, y in PIX]
    sm = [softmax(logits_at(i, j)) for (i, j), _ in PIX]
    sg = [[sig(a) for a in logits_at(i, j)] for (i, j), _ in PIX]
    close(DiceLoss(use_sigmoid=False)(LOGITS, TARGET), dice_ref(sm, labels))
    close(DiceLoss()(LOGITS, TARGET), dice_ref(sg, labels))                                  # sigmoid (MMSeg 1.x default)
    close(DiceLoss(use_sigmoid=False, naive_dice=True, smooth=0.5)(LOGITS, TARGET), dice_ref(sm, labels, 0.5, 1))
    close(DiceLoss(use_sigmoid=False, eps=1e-3, exponent=1)(LOGITS, TARGET), dice_ref(sm, labels, 1e-3, 1))
    close(DiceLoss(use_sigmoid=False, class_weight=[1., 0., 2.], loss_weight=3.)(LOGITS, TARGET),
          3 * dice_ref(sm, labels, cw=[1., 0., 2.]))
    # batch: mean of per-image losses
    x2, t2 = torch.cat([LOGITS, LOGITS.flip(-1)]), torch.cat([TARGET, TARGET])
    a = DiceLoss(use_sigmoid=False)(x2[:1], t2[:1]); b = DiceLoss(use_sigmoid=False)(x2[1:], t2[1:])
    close(DiceLoss(use_sigmoid=False)(x2, t2), (a + b) / 2)
    close(DiceLoss(use_sigmoid=False)(x2, t2, weight=torch.tensor([1., 3.])), (a + 3 * b) / 2)

def test_dice_ignore_index_channel_masks_pixels():
    # with ignore_index=2 the pixels labelled 2 are not valid, so only pixels (0,0),(0,1) count for classes 0 and 1
    t = torch.tensor([[[0, 1], [2, 2]]])
    P = [softmax(logits_at(0, 0)), softmax(logits_at(0, 1))]; lab = [0, 1]
    ref = sum(1 - (2 * sum(p[c] * (y == c) for p, y in zip(P, lab)) + 1) / (sum(p[c] ** 2 for p in P) + lab.count(c) + 1)
              for c in (0, 1)) / 2
    close(DiceLoss(use_sigmoid=False, ignore_index=2)(LOGITS, t), ref)

# ---------------------------------------------------------------- FocalLoss
def focal_ref(gamma, alpha, cw=None, denom=None):
    s = 0.
    for (i, j), y in PIX:
        for c, a in enumerate(logits_at(i, j)):
            p, t = sig(a), float(c == y)
            q = p if t else 1 - p
            al = (alpha[c] if isinstance(alpha, list) else alpha)
            at = al if t else 1 - al
            s += -at * (1 - q) ** gamma * math.log(q) * (cw[c] if cw else 1.)
    return s / denom

def test_focal():
    close(FocalLoss()(LOGITS, TARGET), focal_ref(2.0, 0.5, denom=12))              # mean over all pixels x classes
    close(FocalLoss(gamma=1.5, alpha=0.25, avg_non_ignore=True)(LOGITS, TARGET), focal_ref(1.5, 0.25, denom=9))
    close(FocalLoss(alpha=[0.2, 0.5, 0.9], class_weight=[1., 2., 0.5])(LOGITS, TARGET),
          focal_ref(2.0, [0.2, 0.5, 0.9], cw=[1., 2., 0.5], denom=12))
    close(FocalLoss(gamma=0.0, alpha=0.5, reduction="sum")(LOGITS, TARGET), focal_ref(0.0, 0.5, denom=1))
    with pytest.raises(ValueError, match="sigmoid"): FocalLoss(use_sigmoid=False)

# ---------------------------------------------------------------- LovaszLoss (set-based Lovász extension)
def jaccard_loss_of(mis, fg):
    "Δ_J(M) = |M| / |fg ∪ M| for a set M of mispredicted pixels."
    return len(mis) / len(fg | mis) if (fg | mis) else 0.

def lovasz_ref(probs, labels, classes="present"):
    C = len(probs[0]); vals = []
    for c in range(C):
        fg = {k for k, y in enumerate(labels) if y == c}
        if classes == "present" and not fg: continue
        err = [abs((labels[k] == c) - probs[k][c]) for k in range(len(labels))]
        order = sorted(range(len(err)), key=lambda k: -err[k])
        tot, prev, S = 0., 0., set()
        for k in order:
            S.add(k); cur = jaccard_loss_of(S, fg); tot += err[k] * (cur - prev); prev = cur
        vals.append(tot)
    return sum(vals) / len(vals)

def test_lovasz_softmax():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=g)
    t = torch.randint(0, 3, (2, 3, 3), generator=g); t[0, 0, :] = IGN   # class 3 absent
    P = x.softmax(1).permute(0, 2, 3, 1).reshape(-1, 4); L = t.reshape(-1)
    keep = [k for k in range(len(L)) if L[k] != IGN]
    probs = [P[k].tolist() for k in keep]; labels = [int(L[k]) for k in keep]
    close(LovaszLoss()(x, t), lovasz_ref(probs, labels))
    close(LovaszLoss(classes="all")(x, t), lovasz_ref(probs, labels, "all"))
    per = []
    for b in range(2):
        Pb = x[b:b + 1].softmax(1).permute(0, 2, 3, 1).reshape(-1, 4); Lb = t[b].reshape(-1)
        kb = [k for k in range(len(Lb)) if Lb[k] != IGN]
        per.append(lovasz_ref([Pb[k].tolist() for k in kb], [int(Lb[k]) for k in kb]))
    close(LovaszLoss(per_image=True)(x, t), sum(per) / 2)
    close(LovaszLoss(per_image=True, loss_weight=2.)(x, t, weight=torch.tensor([1., 0.])), 2 * per[0] / 2)
    # class weights multiply each class term
    cw = [1., 2., 3., 4.]
    vals = []
    for c in sorted(set(labels)):
        fg = {k for k, y in enumerate(labels) if y == c}
        err = [abs((labels[k] == c) - probs[k][c]) for k in range(len(labels))]
        order = sorted(range(len(err)), key=lambda k: -err[k]); tot, prev, S = 0., 0., set()
        for k in order: S.add(k); cur = jaccard_loss_of(S, fg); tot += err[k] * (cur - prev); prev = cur
        vals.append(cw[c] * tot)
    close(LovaszLoss(class_weight=cw)(x, t), sum(vals) / len(vals))

def test_lovasz_chunking_matches():
    from segnb.losses import lovasz_softmax_flat
    g = torch.Generator().manual_seed(1)
    p = torch.rand(50, 6, generator=g).softmax(1); y = torch.randint(0, 6, (50,), generator=g)
    close(lovasz_softmax_flat(p, y, chunk_elems=60), lovasz_softmax_flat(p, y))

def test_lovasz_hinge():
    x = torch.tensor([[[[1.5, -0.5], [0.2, -2.0]]]]); t = torch.tensor([[[1, 0], [1, IGN]]])
    logit = [1.5, -0.5, 0.2]; lab = [1, 0, 1]
    err = [1 - a * (2 * y - 1) for a, y in zip(logit, lab)]
    fg = {0, 2}; order = sorted(range(3), key=lambda k: -err[k]); tot, prev, S = 0., 0., set()
    for k in order: S.add(k); cur = jaccard_loss_of(S, fg); tot += max(err[k], 0) * (cur - prev); prev = cur
    close(LovaszLoss(loss_type="binary")(x, t), tot)

# ---------------------------------------------------------------- TverskyLoss
def test_tversky():
    al, be, sm = 0.3, 0.7, 1.0
    P = [softmax(logits_at(i, j)) for (i, j), _ in PIX]; lab = [y for _, y in PIX]
    ref = 0.
    for c in range(3):
        tp = sum(p[c] * (y == c) for p, y in zip(P, lab)); fp = sum(p[c] * (y != c) for p, y in zip(P, lab))
        fn = sum((1 - p[c]) * (y == c) for p, y in zip(P, lab))
        ref += 1 - (tp + sm) / (tp + al * fp + be * fn + sm)
    close(TverskyLoss()(LOGITS, TARGET), ref / 3)
    # alpha = beta = 0.5 is the naive dice (Tversky smooth s <-> dice smooth 2s)
    close(TverskyLoss(alpha=0.5, beta=0.5, smooth=0.5)(LOGITS, TARGET), DiceLoss(use_sigmoid=False, naive_dice=True, smooth=1.0)(LOGITS, TARGET))

# ---------------------------------------------------------------- OHEM
def test_ohem_cross_entropy():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 3, 3, generator=g) * 2; t = torch.randint(0, 3, (1, 3, 3), generator=g); t[0, 2, 2] = IGN
    cells = [(i, j) for i in range(3) for j in range(3) if int(t[0, i, j]) != IGN]
    prob = {c: softmax(logits_at(*c, x=x))[int(t[0][c])] for c in cells}
    nl = {c: -math.log(prob[c]) for c in cells}
    srt = sorted(prob.values())
    for thres, min_kept in [(0.7, 1), (0.2, 5), (0.0, 3), (0.99, 100)]:
        thr = max(srt[min(min_kept, len(srt) - 1)], thres)
        kept = [nl[c] for c in cells if prob[c] < thr]
        close(OhemCrossEntropy(thres=thres, min_kept=min_kept)(x, t), sum(kept) / len(kept))
    with pytest.raises(ValueError, match="disagree"): OhemCrossEntropy(ignore_label=255, ignore_index=0)

def test_ohem_pixel_sampler():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 4, generator=g); t = torch.randint(0, 3, (2, 4, 4), generator=g); t[0, 0] = IGN
    w = OHEMPixelSampler(thresh=0.5, min_kept=2).sample(x, t[:, None])
    pt = x.softmax(1).gather(1, t.clamp(max=2)[:, None])[:, 0]
    vals = sorted(float(pt[b, i, j]) for b in range(2) for i in range(4) for j in range(4) if int(t[b, i, j]) != IGN)
    thr = max(vals[min(4, len(vals) - 1)], 0.5)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                exp = 0. if int(t[b, i, j]) == IGN else float(float(pt[b, i, j]) < thr)
                assert float(w[b, i, j]) == exp
    # without thresh: the min_kept*B valid pixels of largest loss, ranked by the head's losses
    class Head: ignore_index = IGN; loss_decode = build_losses([dict(type="CrossEntropyLoss")])
    s = build_pixel_sampler(dict(type="OHEMPixelSampler", min_kept=3), context=Head())
    w = s.sample(x, t)
    nl = F.cross_entropy(x, t, ignore_index=IGN, reduction="none")
    cand = sorted(((float(nl[b, i, j]), (b, i, j)) for b in range(2) for i in range(4) for j in range(4) if int(t[b, i, j]) != IGN), reverse=True)
    top = {c for _, c in cand[:6]}
    assert {(b, i, j) for b in range(2) for i in range(4) for j in range(4) if w[b, i, j] == 1} == top
    assert float(w.sum()) == 6
    # the weight goes back into the loss as a per-pixel weight
    l = CrossEntropyLoss()(x, t, weight=w)
    close(l, sum(v for v, c in cand[:6]) / 32)
    with pytest.raises(ValueError, match="loss_decode"): OHEMPixelSampler(min_kept=3).sample(x, t)

# ---------------------------------------------------------------- BoundaryLoss
def boundary_ref(mask, width, ign):
    "MMSeg's GenerateEdge written with explicit loops."
    H, W = len(mask), len(mask[0]); e = [[0] * W for _ in range(H)]
    ok = lambda a, b: a != ign and b != ign
    for i in range(H):
        for j in range(W):
            if i >= 1 and mask[i][j] != mask[i - 1][j] and ok(mask[i][j], mask[i - 1][j]): e[i][j] = 1
            if j + 1 < W and mask[i][j] != mask[i][j + 1] and ok(mask[i][j], mask[i][j + 1]): e[i][j] = 1
            if i + 1 < H and j + 1 < W and mask[i][j] != mask[i + 1][j + 1] and ok(mask[i][j], mask[i + 1][j + 1]): e[i][j] = 1
            if i + 1 < H and j >= 1 and mask[i][j] != mask[i + 1][j - 1] and ok(mask[i][j], mask[i + 1][j - 1]): e[i][j] = 1
    a = width // 2; out = [[0] * W for _ in range(H)]
    for i in range(H):
        for j in range(W):
            out[i][j] = max(e[y][x] for y in range(i - a, i - a + width) for x in range(j - a, j - a + width)
                            if 0 <= y < H and 0 <= x < W)
    return out

def test_mask_to_boundary():
    g = torch.Generator().manual_seed(5)
    m = torch.randint(0, 3, (2, 6, 7), generator=g); m[0, 0, 0] = IGN; m[1, 3, 3:] = IGN
    for width in (1, 2, 3, 4):
        got = mask_to_boundary(m, width, IGN)
        for b in range(2):
            assert got[b].tolist() == [[float(v) for v in r] for r in boundary_ref(m[b].tolist(), width, IGN)], width

def test_boundary_loss():
    m = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, IGN], [2, 2, 2, 2]]])
    x = torch.linspace(-2, 2, 16).view(1, 1, 4, 4)
    bd = boundary_ref(m[0].tolist(), 1, IGN)
    cells = [(i, j) for i in range(4) for j in range(4) if int(m[0, i, j]) != IGN]
    pos = sum(bd[i][j] for i, j in cells); neg = len(cells) - pos
    s = 0.
    for i, j in cells:
        a, y = float(x[0, 0, i, j]), bd[i][j]
        w = neg / len(cells) if y else pos / len(cells)
        s += w * (math.log(1 + math.exp(a)) - y * a)
    close(BoundaryLoss(edge_width=1, loss_weight=20.)(x, m), 20 * s / len(cells))
    # ready-made boundary map as float target
    close(BoundaryLoss()(x, torch.tensor(bd, dtype=torch.float)[None, None]),
          BoundaryLoss()(x, torch.tensor(bd, dtype=torch.float)[None, None]))
    with pytest.raises(ValueError, match="one-channel"): BoundaryLoss()(LOGITS, TARGET)

# ---------------------------------------------------------------- all losses: everything ignored, gradients
ALL = [dict(type="CrossEntropyLoss"), dict(type="CrossEntropyLoss", class_weight=[1, 2, 3]),
       dict(type="CrossEntropyLoss", avg_non_ignore=True, class_weight=[1, 2, 3]),
       dict(type="CrossEntropyLoss", use_sigmoid=True, avg_non_ignore=True), dict(type="DiceLoss"),
       dict(type="DiceLoss", use_sigmoid=False, naive_dice=True), dict(type="FocalLoss"), dict(type="FocalLoss", avg_non_ignore=True),
       dict(type="LovaszLoss"), dict(type="LovaszLoss", per_image=True, classes="all"), dict(type="TverskyLoss"),
       dict(type="OhemCrossEntropy", min_kept=2)]

@pytest.mark.parametrize("cfg", ALL, ids=[str(c) for c in ALL])
def test_all_ignored_finite(cfg):
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    l = LOSSES.build(cfg)(x, torch.full((2, 5, 5), IGN)); l.backward()
    assert l.item() == 0.0
    assert torch.isfinite(x.grad).all()

@pytest.mark.parametrize("cfg", ALL, ids=[str(c) for c in ALL])
def test_gradients_and_ignored_pixels_do_not_matter(cfg):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 5, 5, generator=g, requires_grad=True); t = torch.randint(0, 3, (2, 5, 5), generator=g)
    t[:, :2] = IGN
    loss = LOSSES.build(cfg); l = loss(x, t); l.backward()
    assert torch.isfinite(l) and torch.isfinite(x.grad).all()
    assert x.grad[:, :, :2].abs().max() == 0, "ignored pixels got a gradient"
    x2 = x.detach().clone(); x2[:, :, :2] = torch.randn(2, 3, 2, 5) * 10   # changing ignored logits changes nothing
    close(loss(x2, t), l.detach())

def test_boundary_all_ignored():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    l = BoundaryLoss()(x, torch.full((1, 4, 4), IGN)); l.backward()
    assert l.item() == 0 and torch.isfinite(x.grad).all()

# ---------------------------------------------------------------- combinator
def test_build_losses_weighted_sum():
    crit = build_losses([dict(type="CrossEntropyLoss", loss_weight=1.0), dict(type="DiceLoss", loss_weight=3.0),
                         dict(type="LovaszLoss", loss_weight=0.5)], ignore_index=IGN)
    assert isinstance(crit, LossSum) and list(crit.parts) == ["loss_ce", "loss_dice", "loss_lovasz"]
    ref = CrossEntropyLoss()(LOGITS, TARGET) + 3 * DiceLoss()(LOGITS, TARGET) + 0.5 * LovaszLoss()(LOGITS, TARGET)
    close(crit(LOGITS, TARGET), ref)
    close(crit.last_losses["loss_dice"], 3 * DiceLoss()(LOGITS, TARGET))
    d = crit.loss_dict(LOGITS, TARGET); assert set(d) == {"loss_ce", "loss_dice", "loss_lovasz"}
    # head's ignore_index reaches every part that does not set its own
    c2 = build_losses([dict(type="CrossEntropyLoss"), dict(type="DiceLoss", ignore_index=3)], ignore_index=0)
    assert c2.parts["loss_ce"].ignore_index == 0 and c2.parts["loss_dice"].ignore_index == 3
    single = build_losses(dict(type="FocalLoss", loss_weight=2.0))
    close(single(LOGITS, TARGET), FocalLoss(loss_weight=2.0)(LOGITS, TARGET))
    with pytest.raises(Exception, match="did you mean"): build_losses([dict(type="DiceLos")])

def test_accuracy():
    close(accuracy(LOGITS, TARGET), 100 * sum(int(np.argmax(logits_at(i, j)) == y) for (i, j), y in PIX) / 3)
    close(accuracy(LOGITS, torch.full((1, 2, 2), IGN)), 0.)

def test_fastai_tensor_types():
    from fastai.torch_core import TensorImage, TensorMask
    x = TensorImage(torch.randn(2, 3, 6, 6)).requires_grad_(); t = TensorMask(torch.randint(0, 3, (2, 6, 6))); t[:, 0] = IGN
    crit = build_losses([dict(type=n) for n in ["CrossEntropyLoss", "DiceLoss", "FocalLoss", "LovaszLoss", "TverskyLoss", "OhemCrossEntropy"]])
    l = crit(x, t); l.backward()
    assert type(l) is torch.Tensor and torch.isfinite(x.grad).all()
    close(l, crit(x.as_subclass(torch.Tensor), t.as_subclass(torch.Tensor)))
    assert OHEMPixelSampler(thresh=0.7, min_kept=2).sample(x, t).shape == (2, 6, 6)
    assert type(BoundaryLoss()(x[:, :1], t)) is torch.Tensor
