"Two gloo processes on CPU: the same validation metrics as one process on the same data, and DDP training keeps the ranks in sync."
import json, os, socket, subprocess, sys, textwrap
from pathlib import Path
import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys, torch
    torch.set_num_threads(1)
    from segnb.data.core import seg_dataloaders
    from segnb.learner import seg_learner
    import segnb.distributed
    root, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    dls = seg_dataloaders(root, bs=2, val_bs=3, img_suffix=".png", seed=0)
    learn = seg_learner(dls, "fcn", backbone="test_resnet.r160_in1k", output_stride=8, auxiliary_head=False)
    learn.to_distributed()
    rank = int(os.environ.get("RANK", 0))
    with learn.no_bar(), learn.no_logging():
        if mode == "train": learn.fit_iters(4, 4, lr=1e-3, seed=0)
        res = learn.validate_metrics()
    sd = {k: v.double().sum().item() for k, v in learn.model.state_dict().items() if v.is_floating_point()}
    json.dump(dict(metrics=res, checksum=sum(sd.values())), open(f"{out}/rank{rank}.json", "w"))
''')

def _free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from segnb.data.synthetic import synthetic_scenes
    return synthetic_scenes(14, size=48, seed=1, root=tmp_path_factory.mktemp("dist") / "scenes")

def _run(tmp, root, mode, world):
    script = tmp / "job.py"; script.write_text(SCRIPT)
    out = tmp / f"{mode}{world}"; out.mkdir()
    port, procs = _free_port(), []
    for r in range(world):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        if world == 1: [env.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]
        procs.append(subprocess.Popen([sys.executable, str(script), str(root), str(out), mode], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs: p.kill()
    for p, o in zip(procs, outs): assert p.returncode == 0, o[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]

def test_gloo_metrics_equal_single_process(tmp_path, scenes):
    one = _run(tmp_path, scenes, "eval", 1)[0]
    two = _run(tmp_path, scenes, "eval", 2)
    for k in ("mIoU", "aAcc", "mAcc"):
        assert two[0]["metrics"][k] == pytest.approx(one["metrics"][k], abs=1e-6)
        assert two[1]["metrics"][k] == pytest.approx(one["metrics"][k], abs=1e-6)

def test_gloo_ddp_training_keeps_ranks_in_sync(tmp_path, scenes):
    two = _run(tmp_path, scenes, "train", 2)
    assert two[0]["checksum"] == pytest.approx(two[1]["checksum"], rel=1e-9)
    assert two[0]["metrics"] == pytest.approx(two[1]["metrics"])
