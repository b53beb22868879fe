"Execute every notebook in nbs/ (nbdev's runner), skipping cells flagged with the tst_flags of pyproject.toml."
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_nb

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("_"))

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(nb):
    flags = get_config(NBS).tst_flags
    flags = flags.split() if isinstance(flags, str) else list(flags or [])
    ok, secs = run_nb(nb, skip_flags=flags, showerr=True)
    assert ok, f"{nb.name} failed (see the traceback above)"
