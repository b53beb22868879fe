"""Render each segnb dashboard in a real JupyterLab and take headless-Chromium screenshots.

1. writes one small notebook per dashboard (synthetic data, tiny models, a loopback server for the download), with the
   code cells collapsed so the widget is what the page shows;
2. executes them with nbclient, keeping the widget state in the notebook (as "Save Widget State" does);
3. starts JupyterLab on 127.0.0.1 (random free port, no token, its own settings folder) and opens each notebook;
4. takes a screenshot of each with headless Chromium, driven over the DevTools protocol so the shot waits until the widgets
   are drawn (a plain `--screenshot` fires before JupyterLab restores them), and stops the server.

Usage: .venv/bin/python tools/screenshot_widgets.py [--out widget_screenshots] [--only explorer,training] [--chromium PATH]
Needs `jupyterlab` and `nbclient` (the dev extra) and a Chromium (Debian: `apt-get install chromium`). Every step is
bounded in time; the whole run takes a few minutes on a loaded 2-core machine."""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

PRELUDE = "import os, warnings; os.environ.setdefault('HF_HUB_OFFLINE', '1'); warnings.simplefilter('ignore', FutureWarning); warnings.simplefilter('ignore', UserWarning)\nimport torch; torch.set_num_threads(1)\nfrom pathlib import Path; import tempfile, numpy as np\n"

NOTEBOOKS = {
    "explorer": ["""
from segnb.data.synthetic import synthetic_scenes
from segnb.widgets import DatasetExplorer
from PIL import Image
root = synthetic_scenes(24, size=96, seed=0, root=Path(tempfile.mkdtemp()) / "scenes")
bad = np.zeros((96, 96), np.uint8); bad[:10] = 9; Image.fromarray(bad).save(root / "ann_dir/train/00004.png")
ex = DatasetExplorer(root, background=False, max_size=320)
ex.class_dd.value = 4; ex.sort_dd.value = "most of the class"
ex.widget"""],
    "download": ["""
import hashlib, io, threading, zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from PIL import Image
from segnb.data.catalog import dataset_info, Source
from segnb.widgets import DownloadDashboard
rng = np.random.default_rng(0); b = io.BytesIO()
with zipfile.ZipFile(b, "w") as z:
    for k in [f"{i:02d}{lr}" for i in range(1, 12) for lr in "LR"]:       # 22 images: 20 for training, 2 for validation
        f = io.BytesIO(); Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(f, "JPEG"); z.writestr(f"Image_{k}.jpg", f.getvalue())
        for a in ("1stHO", "2ndHO"):
            f = io.BytesIO(); Image.fromarray(((rng.random((24, 32)) > .5) * 255).astype(np.uint8)).save(f, "PNG"); z.writestr(f"Image_{k}_{a}.png", f.getvalue())
data = b.getvalue()
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
srv = ThreadingHTTPServer(("127.0.0.1", 0), H); threading.Thread(target=srv.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{srv.server_address[1]}/CHASEDB1.zip"
info = dataset_info("chase_db1").with_sources(Source("CHASEDB1.zip", url, size=len(data), checksum="sha256:" + hashlib.sha256(data).hexdigest(), extract=False))
dd = DownloadDashboard(root=Path(tempfile.mkdtemp()) / "data", datasets=[info, "ade20k", "cityscapes"])
dd.download_btn.click(); dd.wait(120)
dd.widget"""],
    "training": ["""
from fastai.callback.core import Callback
from segnb.data.synthetic import synthetic_scenes
from segnb.data.core import seg_dataloaders
from segnb.learner import seg_learner
from segnb.widgets import TrainingDashboard
root = synthetic_scenes(24, size=64, seed=0, root=Path(tempfile.mkdtemp()) / "scenes")
learn = seg_learner(seg_dataloaders(root, bs=4), "segformer", backbone="test_resnet.r160_in1k", path=Path(tempfile.mkdtemp()))
class ClickStop(Callback):
    order = 60
    def after_batch(self):
        if self.training and self.learn.train_iter == 16: dash.stop_button.click()
dash = TrainingDashboard(refresh=0.5, n_preds=3, show=False)
learn.logger = lambda *a, **k: None
with learn.no_bar(): learn.fit_iters(40, val_interval=4, lr=3e-3, cbs=[dash, ClickStop()])
dash.widget"""],
    "results": ["""
from segnb.data.synthetic import synthetic_scenes
from segnb.data.core import seg_dataloaders
from segnb.learner import seg_learner
from segnb.widgets import ResultsViewer
root = synthetic_scenes(32, size=64, seed=0, root=Path(tempfile.mkdtemp()) / "scenes")
learn = seg_learner(seg_dataloaders(root, bs=4), "segformer", backbone="test_resnet.r160_in1k", path=Path(tempfile.mkdtemp()))
learn.logger = lambda *a, **k: None
with learn.no_bar(): learn.fit_iters(30, val_interval=30, lr=3e-3)
rv = ResultsViewer(learn, progress=False, max_size=200)
rv.class_sel.value = rv.class_sel.options[1][1]
rv.widget"""],
    "openvocab": ["""
from segnb.models.clip import MaskCLIP
from segnb.data.synthetic import SyntheticScenes
from segnb.widgets import OpenVocabPlayground
torch.manual_seed(0)
mc = MaskCLIP("tiny-test-ViT", pretrained=None, templates="photo")
scenes = {f"scene {i}": SyntheticScenes(4, size=128, seed=5)[i][0] for i in range(3)}
ov = OpenVocabPlayground(mc, images=scenes, queries="sky, grass, orange ball, blue square", max_size=320)
ov.widget"""],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def write_notebooks(d: Path, names) -> list[Path]:
    import nbformat
    out = []
    for name in names:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_markdown_cell(f"### segnb `{name}` dashboard")]
        for src in NOTEBOOKS[name]:
            c = nbformat.v4.new_code_cell(PRELUDE + src.strip())
            c.metadata["jupyter"] = {"source_hidden": True}
            nb.cells.append(c)
        p = d / f"{name}.ipynb"; nbformat.write(nb, p); out.append(p)
    return out


def execute(p: Path, timeout: int, data_dir: Path):
    "Run the notebook, keep the widget state, and sign it (JupyterLab renders widget views, an unsafe output type, only in trusted notebooks)."
    import nbformat
    from nbclient import NotebookClient
    from nbformat.sign import NotebookNotary
    nb = nbformat.read(p, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True, resources={"metadata": {"path": str(p.parent)}}).execute()
    NotebookNotary(data_dir=str(data_dir)).sign(nb)
    nbformat.write(nb, p)
    n = len(nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {}))
    print(f"executed {p.name} in {time.time() - t0:.0f}s ({n} widget models saved)", flush=True)


def start_lab(root: Path, port: int, settings: Path, data_dir: Path, timeout: float = 120):
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(settings / "ws"),
           "JUPYTER_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
           "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f"JupyterLab exited ({proc.returncode}); see {root / 'lab.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2); return proc
        except Exception: time.sleep(0.5)
    stop(proc); raise TimeoutError(f"JupyterLab did not answer on port {port} within {timeout}s; see {root / 'lab.log'}")


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)


class Browser:
    """Headless Chromium driven over the DevTools protocol (websocket-client, a Jupyter dependency): open a page, wait until
    the widgets are drawn, capture the viewport. `--screenshot` alone shoots before JupyterLab has restored the widgets."""
    def __init__(self, chromium: str, size=(1400, 1000), timeout: float = 60, hide_disconnected: bool = True):
        import websocket
        self.hide_disconnected = hide_disconnected
        self.prof = Path(tempfile.mkdtemp(prefix="segnb-chromium-"))
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={self.prof}",
               f"--window-size={size[0]},{size[1]}", "--remote-debugging-port=0", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t0, port_file = time.time(), self.prof / "DevToolsActivePort"
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() - t0 > timeout or self.proc.poll() is not None: self.close(); raise RuntimeError(f"{chromium} did not start")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        self.ws = websocket.create_connection(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"], timeout=120)
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self._id += 1; self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == self._id:
                if "error" in m: raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})

    def js(self, expr):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")

    def shoot(self, url: str, out: Path, wait_for: str, timeout: float = 150, settle: float = 2.0):
        "Open `url`, wait until the JS expression `wait_for` is true (bounded), then save a PNG of the viewport."
        import base64
        self.call("Page.navigate", url=url)
        t0, ok = time.time(), False
        while time.time() - t0 < timeout:
            try: ok = bool(self.js(wait_for))
            except Exception: ok = False
            if ok: break
            time.sleep(0.5)
        time.sleep(settle)                          # images decode, layout settles
        if self.hide_disconnected:                  # restored from saved state, widgets carry a "no live kernel" badge
            self.js("(() => { const s = document.createElement('style'); s.textContent = "
                    "'.jupyter-widgets-disconnected::before{display:none !important}'; document.head.appendChild(s); })()")
            time.sleep(0.3)
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        print(f"screenshot {out.name}: {'widgets drawn' if ok else 'TIMED OUT waiting for the widgets'} after {time.time() - t0:.0f}s "
              f"({out.stat().st_size:,} bytes)", flush=True)
        return ok

    def close(self):
        try: self.ws.close()
        except Exception: pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.prof, ignore_errors=True)

# drawn = the notebook's widget views exist and every <img> in them has loaded
WIDGETS_DRAWN = ("(() => { const v = document.querySelectorAll('.jp-OutputArea-output .jupyter-widgets');"
                 " const imgs = [...document.querySelectorAll('.jp-OutputArea-output .jupyter-widgets img')];"
                 " return v.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); })()")
HEIGHTS = {"explorer": 1250, "download": 1000, "training": 1350, "results": 1150, "openvocab": 1000}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="widget_screenshots", help="folder for the PNGs (and the executed notebooks)")
    ap.add_argument("--only", default=",".join(NOTEBOOKS), help=f"comma-separated subset of {list(NOTEBOOKS)}")
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    ap.add_argument("--exec-timeout", type=int, default=600, help="seconds per notebook cell")
    ap.add_argument("--width", type=int, default=1400, help="browser window width (px); heights are set per dashboard")
    ap.add_argument("--show-disconnected", action="store_true", help="keep ipywidgets' 'disconnected' badges (the saved widgets have no live kernel)")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    bad = [n for n in names if n not in NOTEBOOKS]
    if bad: ap.error(f"unknown dashboards {bad}; choose from {list(NOTEBOOKS)}")
    if not shutil.which(a.chromium) and not Path(a.chromium).exists():
        ap.error(f"no Chromium at {a.chromium!r}: install it (Debian: apt-get install chromium) or pass --chromium PATH")
    out = Path(a.out).resolve(); out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="segnb-lab-"))
    t0 = time.time()
    nbs = write_notebooks(work, names)
    data_dir = work / ".jupyter_data"; data_dir.mkdir()   # the notary database that marks the notebooks trusted
    for p in nbs: execute(p, a.exec_timeout, data_dir)
    port = free_port()
    proc = start_lab(work, port, work / ".settings", data_dir)
    ok = True
    try:
        for p in nbs:
            br = Browser(a.chromium, size=(a.width, HEIGHTS.get(p.stem, 1000)), hide_disconnected=not a.show_disconnected)
            try: ok &= br.shoot(f"http://127.0.0.1:{port}/doc/tree/{p.name}", out / f"{p.stem}.png", WIDGETS_DRAWN)
            finally: br.close()
            shutil.copy(p, out / p.name)
    finally:
        stop(proc)
        shutil.copy(work / "lab.log", out / "lab.log")
    print(f"done in {time.time() - t0:.0f}s: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
