"""The TrainingDashboard's Stop button in a real Jupyter kernel: the click (a comm message from the frontend) arrives while the
training cell is still running, training ends after the current batch with a checkpoint, and a cell queued during training
still runs afterwards. This is what a browser does; here jupyter_client plays the browser."""
import os, sys, time, json
from pathlib import Path
import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

SETUP = r"""
import torch, tempfile
from pathlib import Path
torch.set_num_threads(1)
from segnb.data.synthetic import synthetic_scenes
from segnb.data.core import seg_dataloaders
from segnb.learner import seg_learner
from segnb.widgets import TrainingDashboard
root = synthetic_scenes(8, size=32, seed=0, root=Path(tempfile.mkdtemp()) / "s")
learn = seg_learner(seg_dataloaders(root, bs=2), "segformer", backbone="test_resnet.r160_in1k", path=Path(tempfile.mkdtemp()))
dash = TrainingDashboard(refresh=0.2, n_preds=1)
print("STOP_ID", dash.stop_button.model_id)
"""
TRAIN = "with learn.no_bar(): learn.fit_iters(500, val_interval=250, lr=1e-3, cbs=[dash])"


def _wait_reply(kc, msg_id, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try: m = kc.get_shell_msg(timeout=1)
        except Exception: continue
        if m["parent_header"].get("msg_id") == msg_id: return m
    raise TimeoutError(f"no reply to {msg_id} in {timeout}s")


def _stdout(kc, msg_id, timeout=30):
    "Text printed by request `msg_id` (until its kernel status goes idle)."
    out, t0 = [], time.time()
    while time.time() - t0 < timeout:
        try: m = kc.get_iopub_msg(timeout=1)
        except Exception: continue
        if m["parent_header"].get("msg_id") != msg_id: continue
        if m["msg_type"] == "stream": out.append(m["content"]["text"])
        if m["msg_type"] == "error": raise AssertionError("\n".join(m["content"]["traceback"]))
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle": break
    return "".join(out)


@pytest.mark.slow
def test_stop_button_click_reaches_a_running_training_cell(tmp_path):
    from jupyter_client.manager import start_new_kernel
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path), startup_timeout=120)
    try:
        mid = kc.execute(SETUP)
        text = _stdout(kc, mid, timeout=240)
        assert _wait_reply(kc, mid, 60)["content"]["status"] == "ok", text
        stop_id = text.split("STOP_ID")[1].split()[0]
        train = kc.execute(TRAIN)
        # wait until the dashboard reports iteration >= 3 (its status HTML widget updates over comm messages)
        t0, it = time.time(), 0
        while it < 3 and time.time() - t0 < 240:
            try: m = kc.get_iopub_msg(timeout=1)
            except Exception: continue
            if m["msg_type"] == "comm_msg":
                v = str(m["content"].get("data", {}).get("state", {}).get("value", ""))
                if "iter <b>" in v: it = int(v.split("iter <b>")[1].split("<")[0])
            if m["msg_type"] == "error": raise AssertionError("\n".join(m["content"]["traceback"]))
        assert it >= 3, "training did not start"
        queued = kc.execute("x = 41 + 1; print('QUEUED', x, learn.train_iter)")      # a cell queued behind training
        click = kc.session.msg("comm_msg", {"comm_id": stop_id, "data": {"method": "custom", "content": {"event": "click"}}})
        kc.shell_channel.send(click)
        rep = _wait_reply(kc, train, 240)
        assert rep["content"]["status"] == "ok"
        out = _stdout(kc, queued, timeout=60)
        assert _wait_reply(kc, queued, 60)["content"]["status"] == "ok"
        n = int(out.split("QUEUED 42")[1].split()[0])
        assert 3 <= n < 500, out                                          # stopped early, after the click
        check = kc.execute("import segnb.callbacks as c; print('CK', c.load_checkpoint(dash.stop_path)['meta']['iter'], dash.stop_button.description)")
        o = _stdout(kc, check, timeout=60)
        assert f"CK {n} stopped" in o, o
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
