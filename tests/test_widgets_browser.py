"""The dashboards in a real JupyterLab, photographed by headless Chromium (tools/screenshot_widgets.py). Opt-in: it takes a few
minutes and needs a Chromium (Debian: apt-get install chromium): SEGNB_BROWSER_TESTS=1 pytest tests/test_widgets_browser.py"""
import os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("SEGNB_BROWSER_TESTS") != "1", reason="set SEGNB_BROWSER_TESTS=1 to run the browser screenshots"),
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH")]


def test_every_dashboard_renders_in_jupyterlab(tmp_path):
    pytest.importorskip("jupyterlab"); pytest.importorskip("nbclient")
    r = subprocess.run([sys.executable, str(ROOT / "tools/screenshot_widgets.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=1800, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]         # 1: some page never showed its widgets
    for name in ("explorer", "download", "training", "results", "openvocab"):
        a = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB")).astype(np.int16)
        assert a.shape[1] == 1400 and a.std() > 20, name                   # a page with content, not a blank one
        assert f"screenshot {name}.png: widgets drawn" in r.stdout
