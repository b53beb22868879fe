"Serving under load on loopback: 8 concurrent clients x 25 requests with correct masks, 20 malformed requests answered 4xx, still healthy."
import base64, io, json, os, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi"); pytest.importorskip("uvicorn")
from segnb.inference import Segmenter, save_run, tiny_model, TINY_MODEL_CFG
from segnb.data.synthetic import SYNTHETIC_META, render_scene
from segnb.serve import create_app, ServerThread

@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    cfg = dict(model=TINY_MODEL_CFG, data=dict(val_pipeline=[dict(type="Resize", scale=[64, 64])]))
    run = save_run(tiny_model(seed=7), tmp_path_factory.mktemp("run"), cfg, meta=SYNTHETIC_META)
    return Segmenter.from_run(run, num_workers=0)

def _png(a):
    b = io.BytesIO(); Image.fromarray(a).save(b, format="PNG"); return b.getvalue()

def test_load_and_malformed(seg):
    t0 = time.time()
    imgs = [render_scene(np.random.default_rng([11, i]), (64, 64))[0] for i in range(8)]
    expected = [seg.predict(im).labels for im in imgs]
    pngs = [_png(im) for im in imgs]
    with ServerThread(create_app(seg, max_batch=8, max_wait_ms=5, max_pixels=256 * 256, max_body_bytes=200_000)) as srv:
        assert srv.host == "127.0.0.1"
        def client(c):
            bad = []
            with httpx.Client(base_url=srv.url, timeout=60) as cl:
                for k in range(25):
                    i = (c + k) % len(imgs)
                    mode = k % 3
                    if mode == 0: r = cl.post("/predict", files={"file": (f"{i}.png", pngs[i], "image/png")})
                    elif mode == 1: r = cl.post("/predict", json={"image": base64.b64encode(pngs[i]).decode()})
                    else: r = cl.post("/predict", content=pngs[i], headers={"content-type": "image/png"})
                    if r.status_code != 200: bad.append((k, r.status_code, r.text[:200])); continue
                    got = np.asarray(Image.open(io.BytesIO(r.content)))
                    if not (got == expected[i]).all(): bad.append((k, "mask differs", float((got == expected[i]).mean())))
            return bad
        with ThreadPoolExecutor(8) as pool: results = list(pool.map(client, range(8)))
        assert all(not b for b in results), [b for b in results if b][:3]
        stats = httpx.get(srv.url + "/health").json()
        assert stats["requests"] == 200 and stats["batches"] < 200, stats     # concurrent requests were batched

        big = _png(np.zeros((300, 300, 3), np.uint8))                       # over max_pixels (256*256)
        trunc = pngs[0][: len(pngs[0]) // 2]
        malformed = [
            dict(content=b"definitely not an image", headers={"content-type": "image/png"}),                 # 400
            dict(content=trunc, headers={"content-type": "image/png"}),                                        # 400 truncated
            dict(files={"file": ("t.png", trunc, "image/png")}),                                               # 400 truncated
            dict(content=big, headers={"content-type": "image/png"}),                                          # 413 pixels
            dict(content=b"x" * 300_000, headers={"content-type": "image/png"}),                               # 413 bytes
            dict(content=pngs[0], headers={"content-type": "text/plain"}),                                     # 415
            dict(content=pngs[0]),                                                                             # 415 no type
            dict(json={"image": "%%%not-base64%%%"}),                                                          # 400
            dict(json={"picture": "abc"}),                                                                     # 400
            dict(content=b"{not json", headers={"content-type": "application/json"}),                          # 400
            dict(files={"other": (None, "just text")}),                                                         # 400 no file
            dict(content=b"", headers={"content-type": "image/png"}),                                          # 400 empty
            dict(content=pngs[0], headers={"content-type": "multipart/form-data; boundary=zz"}),               # 400
            dict(json={"image": base64.b64encode(b"GIF89a nonsense").decode()}),                               # 400
            dict(content=_png(np.zeros((1, 70000, 3), np.uint8)), headers={"content-type": "image/png"}),      # 413 pixels
            dict(content=pngs[0], headers={"content-type": "image/png"}, params={"format": "depth"}),          # 422 seg model
            dict(content=pngs[0], headers={"content-type": "image/png"}, params={"format": "gif"}),            # 422
            dict(content=trunc[:40], headers={"content-type": "image/jpeg"}),                                  # 400
            dict(content=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, headers={"content-type": "image/png"}),        # 400
            dict(json=[1, 2, 3]),                                                                              # 400
        ]
        assert len(malformed) == 20
        with httpx.Client(base_url=srv.url, timeout=60) as cl:
            codes = []
            for kw in malformed:
                r = cl.post("/predict", **kw)
                codes.append(r.status_code)
                assert 400 <= r.status_code < 500, (kw.get("headers"), r.status_code, r.text[:300])
                assert "detail" in r.json()
            assert codes.count(413) >= 3 and codes.count(415) == 2 and codes.count(422) == 2, codes
            assert cl.get("/health").json()["status"] == "ok"
            r = cl.post("/predict", files={"file": ("a.png", pngs[3], "image/png")})
            assert r.status_code == 200 and (np.asarray(Image.open(io.BytesIO(r.content))) == expected[3]).all()
            js = cl.post("/predict", params={"format": "json"}, files={"file": ("a.png", pngs[3], "image/png")}).json()
            assert abs(sum(js["areas"].values()) - 1) < 1e-6 and js["shape"] == [64, 64]
            meta = cl.get("/metadata").json()
            assert meta["classes"] == SYNTHETIC_META.classes and meta["palette"] == SYNTHETIC_META.palette
            api = cl.get("/openapi.json").json()
            assert "/predict" in api["paths"] and "multipart/form-data" in api["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert time.time() - t0 < 120, time.time() - t0

def test_depth_format_and_cli_parser(tmp_path):
    "A depth model answers format=depth with a 16-bit PNG; `segnb serve` binds 127.0.0.1 by default."
    import torch, torch.nn as nn
    class Depth(nn.Module):
        task = "depth"
        def __init__(self): super().__init__(); self.c = nn.Conv2d(3, 1, 3, padding=1)
        def forward(self, x): return 0.5 + 4 * torch.sigmoid(self.c(x))
    seg = Segmenter(Depth(), meta=SYNTHETIC_META, num_workers=0)
    img = render_scene(np.random.default_rng(0), (48, 40))[0]
    with ServerThread(create_app(seg)) as srv:
        r = httpx.post(srv.url + "/predict", params={"format": "depth"}, content=_png(img), headers={"content-type": "image/png"})
        assert r.status_code == 200
        d = np.asarray(Image.open(io.BytesIO(r.content))).astype(np.float32) / float(r.headers["x-depth-scale"])
        np.testing.assert_allclose(d, seg.predict(img).depth, atol=1e-3)
        assert httpx.post(srv.url + "/predict", params={"format": "png"}, content=_png(img),
                          headers={"content-type": "image/png"}).status_code == 422
    from segnb.cli import build_parser
    a = build_parser().parse_args(["serve", "some/run"])
    assert a.host == "127.0.0.1" and a.port == 8000 and a.max_batch == 8
