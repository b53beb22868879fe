"""Execute notebooks and save their outputs in place (so each page shows real output), then nbdev-clean them.
Usage: .venv/bin/python tools/run_nbs.py nbs/00_registry.ipynb [more.ipynb ...]"""
import os, subprocess, sys
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from nbdev.test import test_nb

ok = True
for fn in sys.argv[1:]:
    res, secs = test_nb(Path(fn).resolve(), skip_flags=["slow"], save=True)
    print(f"{fn}: {'ok' if res else 'FAILED'} in {secs:.1f}s")
    ok &= res
subprocess.run([str(Path(sys.executable).parent / "nbdev-clean")] , check=True)
sys.exit(0 if ok else 1)
