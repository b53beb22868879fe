"""Benchmark grid: a second run does nothing; a grid killed with SIGKILL completes only its missing cells; a cell
interrupted after a checkpoint resumes from it and ends where an uninterrupted run ends; speed rows next to a peer
from the peers venv; analysis commands; and (opt-in, ~15-30 min) the reference grid reproduces its committed table."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
import yaml
from segnb.benchmark import (run_benchmark, load_grid, grid_cells, cell_status, load_results, check_reproduces, measure_speeds,
                             measure_throughput, default_peers_python, results_markdown)
from segnb.models.segmentor import EncoderDecoder

ROOT = Path(__file__).resolve().parents[1]
MIT = dict(type="MixVisionTransformer", embed_dims=8, num_layers=[1, 1, 1, 1])

def tiny_grid(models=("segformer",), seeds=(0, 1), max_iters=4, val_interval=2):
    mk = {"segformer": dict(from_name=dict(algo="segformer", backbone=MIT, decode_head=dict(channels=16))),
          "fcn": dict(from_name=dict(algo="fcn", backbone="test_resnet.r160_in1k", decode_head=dict(channels=16, num_convs=1),
                                     auxiliary_head=False))}
    return dict(name="tiny", threads=1, seeds=list(seeds), metrics=["mIoU", "mAcc", "aAcc"],
                models={m: mk[m] for m in models},
                datasets={"scenes": dict(data=dict(dataset=dict(type="SyntheticScenes", n=12, size=32), train=dict(split="train"),
                                                   val=dict(split="val", n=4), batch_size=4))},
                train=dict(optimizer=dict(type="AdamW", lr=3e-3),
                           schedule=dict(max_iters=max_iters, val_interval=val_interval, log_interval=1)),
                speed=dict(warmup=1, runs=3))

def mtimes(out):
    return {p.parent.name: p.stat().st_mtime_ns for p in Path(out).glob("cells/*/result.json")}

def test_second_run_does_nothing(tmp_path):
    g = tiny_grid(models=("segformer", "fcn"), seeds=(0,))
    r1 = run_benchmark(g, tmp_path / "b", log=None)
    assert sorted(r1.ran) == ["fcn__scenes__s0", "segformer__scenes__s0"] and not r1.failed
    before, table = mtimes(tmp_path / "b"), load_results(tmp_path / "b")["rows"]
    r2 = run_benchmark(g, tmp_path / "b", log=None)
    assert r2.ran == [] and sorted(r2.skipped) == sorted(r1.ran)
    assert mtimes(tmp_path / "b") == before                       # no result was rewritten
    assert load_results(tmp_path / "b")["rows"] == table
    md = (tmp_path / "b" / "results.md").read_text()
    assert "| segformer | scenes | 0 |" in md and "mIoU" in md and "1 thread," in md
    # the CSV has one row per (model, dataset) with mean/std columns
    import csv
    rows = list(csv.DictReader(open(tmp_path / "b" / "results.csv")))
    assert [r["model"] for r in rows] == ["segformer", "fcn"] and "mIoU_std" in rows[0]

def test_sigkill_then_rerun_completes_only_missing_cells(tmp_path):
    g = tiny_grid(seeds=(0, 1, 2, 3))
    gf = tmp_path / "grid.yaml"; gf.write_text(yaml.safe_dump(g))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([str(Path(sys.executable).parent / "segnb"), "benchmark", str(gf), "--out-dir", str(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        while not list(out.glob("cells/*/result.json")):
            assert p.poll() is None, "the grid ended before a cell finished"
            assert time.time() - t0 < 400, "no cell finished in 400 s"
            time.sleep(0.2)
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    done = mtimes(out)
    cells = [c.id for c in grid_cells(load_grid(gf))]
    assert 1 <= len(done) < len(cells), done
    r = run_benchmark(gf, out, log=None)
    assert sorted(r.skipped) == sorted(done)                      # finished cells were not run again
    assert sorted(r.ran) == sorted(set(cells) - set(done)) and not r.failed
    assert {k: v for k, v in mtimes(out).items() if k in done} == done
    assert {cell_status(c, out) for c in grid_cells(load_grid(gf))} == {"done"}
    assert len(load_results(out)["results"]) == len(cells)

def test_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    g = tiny_grid(seeds=(0,), max_iters=6, val_interval=2)
    full = run_benchmark(g, tmp_path / "a", log=None).results[0]
    # the same cell, "killed" after its iteration-4 checkpoint: no result, the later checkpoints gone
    run_benchmark(g, tmp_path / "b", log=None)
    d = tmp_path / "b" / "cells" / "segformer__scenes__s0"
    (d / "result.json").unlink()
    ck = d / "run" / "checkpoints"
    for f in ck.glob("*.pth"):
        if f.name != "iter_4.pth": f.unlink()
    (ck / "last_checkpoint").write_text("iter_4.pth")
    assert cell_status(grid_cells(load_grid(g))[0], tmp_path / "b") == "partial"
    r = run_benchmark(g, tmp_path / "b", log=None)
    assert r.resumed == ["segformer__scenes__s0"]
    res = r.results[0]
    assert res["resumed_from"].endswith("iter_4.pth")
    for k, v in full["metrics"].items(): assert res["metrics"][k] == pytest.approx(v, abs=1e-6), k   # exact resume

def test_changed_training_reruns_the_cell(tmp_path):
    g = tiny_grid(seeds=(0,), max_iters=2, val_interval=2)
    run_benchmark(g, tmp_path / "b", log=None)
    g["train"]["schedule"]["max_iters"] = 4; g["train"]["schedule"]["val_interval"] = 4
    r = run_benchmark(g, tmp_path / "b", log=None)
    assert r.ran == ["segformer__scenes__s0"] and r.results[0]["iters"] == 4 and r.results[0]["resumed_from"] is None
    # only the speed settings changed: the trained checkpoint is reused, nothing is trained again
    g["speed"] = dict(warmup=1, runs=2)
    r = run_benchmark(g, tmp_path / "b", log=None)
    assert r.ran == ["segformer__scenes__s0"] and r.results[0]["resumed_from"].endswith("iter_4.pth")

def test_bad_grid_errors_name_the_key(tmp_path):
    g = tiny_grid()
    with pytest.raises(ValueError, match="models.x"): load_grid({**g, "models": {"x": dict(config="a.yaml", from_name="fcn")}})
    with pytest.raises(ValueError, match="neither a config"): load_grid({**g, "models": ["not_an_algo"]})
    with pytest.raises(ValueError, match="unknown keys"): load_grid({**g, "epochs": 3})
    bad = {**g, "datasets": {"d": dict(data=dict(dataset=dict(type="NoSuchDataset"), train=dict(split="train"), val=dict(split="val")))}}
    r = run_benchmark(bad, tmp_path / "b", log=None)
    assert set(r.failed) == {"segformer__d__s0", "segformer__d__s1"} and "NoSuchDataset" in r.failed["segformer__d__s0"]
    assert (tmp_path / "b" / "cells" / "segformer__d__s0" / "error.txt").exists()

def test_speed_rows_and_throughput():
    m = EncoderDecoder.from_name("segformer", MIT, num_classes=4, decode_head=dict(channels=16))
    rows = measure_speeds({"a": m}, 32, warmup=1, runs=4, threads=1, log=None)
    r = rows[0]
    assert r["runs"] == 4 and r["fps"] > 0 and r["peak_mem_mb"] > 0 and r["env"]["threads"] == 1
    assert r["env"]["torch"] == torch.__version__ and r["env"]["dtype"] == "float32" and r["env"]["device"].startswith("cpu")
    t = measure_throughput(m, 32, mem_budget_mb=r["peak_mem_mb"] * 4, max_batch=16, warmup=1, runs=2, threads=1)
    assert 2 <= t["batch"] <= 16 and t["peak_mem_mb"] <= r["peak_mem_mb"] * 4 and t["images_per_s"] > 0

def _peers_have(mod):
    py = default_peers_python()
    if py == sys.executable: return False
    return subprocess.run([py, "-c", f"import {mod}"], capture_output=True).returncode == 0

@pytest.mark.skipif(not _peers_have("segmentation_models_pytorch"), reason="no peers venv with segmentation_models_pytorch")
def test_speed_next_to_a_peer(tmp_path):
    from segnb.cli import main
    assert main(["speed", "segformer:mit-b0", "--size", "64", "--num-classes", "6", "--warmup", "1", "--runs", "3",
                 "--threads", "1", "--compare", "smp", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [r["framework"] for r in rows] == ["segnb", "smp"]
    # the same architecture (SMP's decoder differs by one 256-channel norm: 1024 parameters of 3.7M)
    assert rows[1]["equivalent_of"] == "segformer:mit-b0" and rows[1]["params"] == pytest.approx(rows[0]["params"], rel=1e-3)
    assert rows[0]["vs_smp"] == pytest.approx(rows[1]["latency_ms"] / rows[0]["latency_ms"], rel=1e-2)
    assert rows[0]["env"]["peers"]["env"]["threads"] == 1
    assert "vs_smp" in (tmp_path / "speed.md").read_text()

def test_analyze_commands(tmp_path, capsys):
    from segnb.cli import main
    assert main(["analyze", "flops", "segformer_mit-b0_160k_ade20k-512x512", "--shape", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "3.75M params" in out and "| module | GFLOPs |" in out
    run_benchmark(tiny_grid(seeds=(0,), max_iters=2), tmp_path / "b", log=None)
    assert main(["analyze", "zoo-table", str(tmp_path / "b"), "--out", str(tmp_path / "zoo.md")]) == 0
    assert "| segformer | scenes | 32x32 | 2 |" in (tmp_path / "zoo.md").read_text()
    run = next((tmp_path / "b" / "cells").glob("*/run"))
    assert main(["analyze", "logs", str(run), "--keys", "loss", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="nope"): main(["analyze", "logs", str(run), "--keys", "nope"])

def test_reference_table_is_committed():
    res = load_results(ROOT / "benchmarks" / "results" / "reference")
    g = load_grid(ROOT / "benchmarks" / "reference_grid.yaml")
    assert res["done"] == res["cells"] == len(grid_cells(g)) and not res["failed"]
    assert res["command"].startswith("segnb benchmark benchmarks/reference_grid.yaml")
    assert {(r["model"], r["dataset"]) for r in res["rows"]} == {(m, d) for m in g["models"] for d in g["datasets"]}
    assert all(r["n"] == len(g["seeds"]) and r["mIoU_std"] is not None for r in res["rows"])

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SEGNB_BENCH_REFERENCE") != "1", reason="set SEGNB_BENCH_REFERENCE=1 (15-30 min of CPU)")
def test_reference_grid_reproduces_committed_table(tmp_path):
    run = run_benchmark(ROOT / "benchmarks" / "reference_grid.yaml", tmp_path / "ref", log=print)
    assert not run.failed
    bad = [c for c in check_reproduces(tmp_path / "ref", ROOT / "benchmarks" / "results" / "reference") if not c["ok"]]
    assert not bad, bad

def test_depth_model_reports_depth_metrics(tmp_path):
    g = tiny_grid(seeds=(0,), max_iters=2)
    g["metrics"] = ["mIoU", "d1", "abs_rel", "rmse"]
    g["models"] = {"depth": dict(model=dict(
        type="DepthEstimator", backbone=dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8),
        decode_head=dict(type="DepthConvHead", in_channels=[8, 16, 32, 64], in_index=[0, 1, 2, 3], channels=16, max_depth=10.0)))}
    g["datasets"]["scenes"]["data"]["dataset"]["depth"] = True
    g["datasets"]["scenes"]["depth_eval"] = dict(max_depth_eval=10.0)
    r = run_benchmark(g, tmp_path / "b", log=None)
    assert not r.failed, r.failed
    res = r.results[0]
    assert res["task"] == "depth" and set(res["metrics"]) == {"d1", "abs_rel", "rmse"}
    assert 0 <= res["metrics"]["d1"] <= 1 and res["metrics"]["rmse"] > 0
    assert "| depth | scenes | 0 |" in results_markdown(r.rows) and "d1" in results_markdown(r.rows)

@pytest.mark.skipif(not _peers_have("segmentation_models_pytorch"), reason="no peers venv with segmentation_models_pytorch")
def test_grid_compare_adds_peer_ratios(tmp_path):
    g = tiny_grid(seeds=(0,), max_iters=2)
    g["models"] = {"segformer-b0": dict(from_name=dict(algo="segformer", backbone="mit-b0"))}   # default peer: SMP Segformer(mit_b0)
    r = run_benchmark(g, tmp_path / "b", compare=["smp"], log=None)
    assert not r.failed
    sp = json.loads((tmp_path / "b" / "speed_compare.json").read_text())["rows"]
    assert [(x["framework"], x["dataset"]) for x in sp] == [("segnb", "scenes"), ("smp", "scenes")]
    assert r.rows[0]["vs_smp"] == pytest.approx(sp[1]["latency_ms"] / sp[0]["latency_ms"], rel=1e-2)
    assert "vs_smp" in (tmp_path / "b" / "results.md").read_text()
