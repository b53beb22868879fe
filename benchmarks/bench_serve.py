#!/usr/bin/env python3
"""HTTP serving throughput and latency with and without dynamic batching (loopback only).

Starts `segnb.serve.create_app` on a free 127.0.0.1 port in this process, then `--clients` threads each send `--requests` PNG
uploads (`POST /predict`, index-PNG answers) as fast as they get answers. Run once with `max_batch=1` (every request its own
forward) and once with `--max-batch` (dynamic batching, `--max-wait-ms`); reports requests/s, p50 / p99 latency and the mean
batch size the server formed. The model and image size are arguments (default: FCN on a timm test ResNet, 128x128 images).

Usage:  .venv/bin/python benchmarks/bench_serve.py [--clients 16] [--requests 25] [--size 128] [--max-batch 8] [--max-wait-ms 5]
                                                   [--algo fcn --backbone test_resnet.r160_in1k] [--quick]
"""
from __future__ import annotations
import argparse, io, json, os, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
from PIL import Image


def run_load(url, pngs, clients, requests):
    import httpx
    def client(c):
        lat, errors = [], 0
        with httpx.Client(base_url=url, timeout=120) as cl:
            for k in range(requests):
                body = pngs[(c + k) % len(pngs)]
                t0 = time.perf_counter()
                r = cl.post("/predict", content=body, headers={"content-type": "image/png"})
                lat.append(time.perf_counter() - t0)
                errors += r.status_code != 200
        return lat, errors
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool: res = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    lat = sorted(x for l, _ in res for x in l)
    return dict(requests=len(lat), errors=sum(e for _, e in res), wall_s=round(wall, 3), req_s=round(len(lat) / wall, 1),
                p50_ms=round(1000 * lat[len(lat) // 2], 1), p99_ms=round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16); ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--size", type=int, default=128); ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--algo", default="fcn"); ap.add_argument("--backbone", default="test_resnet.r160_in1k")
    ap.add_argument("--quick", action="store_true", help="4 clients x 5 requests of 64x64: a smoke run")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if a.quick: a.clients, a.requests, a.size = 4, 5, 64
    import torch
    from segnb.inference import Segmenter
    from segnb.models.segmentor import EncoderDecoder
    from segnb.data.synthetic import SYNTHETIC_META, render_scene
    from segnb.serve import create_app, ServerThread
    torch.manual_seed(0)
    model = EncoderDecoder.from_name(a.algo, backbone=a.backbone, num_classes=6, auxiliary_head=False)
    seg = Segmenter(model, meta=SYNTHETIC_META, num_workers=0)
    pngs = []
    for i in range(16):
        b = io.BytesIO(); Image.fromarray(render_scene(np.random.default_rng([1, i]), (a.size, a.size))[0]).save(b, format="PNG")
        pngs.append(b.getvalue())
    out = dict(clients=a.clients, requests_per_client=a.requests, size=a.size, model=f"{a.algo}/{a.backbone}",
               cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), load=os.getloadavg()[0])
    for name, mb in (("no batching (max_batch=1)", 1), (f"dynamic batching (max_batch={a.max_batch}, {a.max_wait_ms} ms)", a.max_batch)):
        app = create_app(seg, max_batch=mb, max_wait_ms=a.max_wait_ms)
        with ServerThread(app) as srv:
            run_load(srv.url, pngs[:2], 2, 2)                                   # warm-up
            st0 = dict(app.state.batcher.stats)
            r = run_load(srv.url, pngs, a.clients, a.requests)
            st = app.state.batcher.stats
            r["mean_batch"] = round((st["requests"] - st0["requests"]) / max(st["batches"] - st0["batches"], 1), 2)
        out[name] = r
        print(f"{name:45s} {r['req_s']:7.1f} req/s   p50 {r['p50_ms']:7.1f} ms   p99 {r['p99_ms']:7.1f} ms   "
              f"mean batch {r['mean_batch']:.1f}   errors {r['errors']}")
    print(f"({a.clients} clients x {a.requests} requests, {a.size}x{a.size} PNGs, {out['model']}, load avg {out['load']:.1f})")
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
