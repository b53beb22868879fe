import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Hub look-ups must fail fast: the variable has to be set before timm/open_clip import (Makefile sets it too).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

def pytest_configure(config):
    # one thread per xdist worker: 2 workers on 2 cores
    if os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            import torch; torch.set_num_threads(1)
        except ImportError: pass

@pytest.fixture
def root(): return ROOT

def run_cli(*args, cwd=None, env=None, timeout=300):
    "Run the installed `segnb` console script; returns the CompletedProcess."
    import subprocess
    exe = Path(sys.executable).parent / "segnb"
    e = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
