"The notebooks are the source: exporting and cleaning a copy of the project changes nothing, and README.md matches index.ipynb."
import shutil, subprocess, sys
from pathlib import Path
from conftest import ROOT

def _snapshot(d: Path, pattern: str) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in d.rglob(pattern) if "__pycache__" not in p.parts}

def test_export_and_clean_are_no_ops(tmp_path):
    for name in ["nbs", "segnb"]: shutil.copytree(ROOT/name, tmp_path/name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ["pyproject.toml", "README.md"]: shutil.copy(ROOT/name, tmp_path/name)
    py_before, nb_before = _snapshot(tmp_path/"segnb", "*.py"), _snapshot(tmp_path/"nbs", "*.ipynb")
    bindir = Path(sys.executable).parent
    for cmd in ["nbdev-export", "nbdev-clean"]:
        r = subprocess.run([str(bindir/cmd)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    py_after, nb_after = _snapshot(tmp_path/"segnb", "*.py"), _snapshot(tmp_path/"nbs", "*.ipynb")
    assert sorted(py_after) == sorted(py_before), "nbdev-export created or removed modules: run it and commit segnb/"
    changed = [str(k) for k in py_before if py_before[k] != py_after[k]]
    assert not changed, f"segnb/ differs from the notebooks in {changed}: edit the notebook, run nbdev-export"
    changed = [str(k) for k in nb_before if nb_before[k] != nb_after[k]]
    assert not changed, f"notebooks not clean: {changed}: run nbdev-clean"

def test_readme_matches_index():
    r = subprocess.run([sys.executable, str(ROOT/"tools"/"make_readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
