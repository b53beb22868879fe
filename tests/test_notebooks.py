"Execute every notebook in nbs/ (nbdev's runner), skipping cells flagged with the tst_flags of pyproject.toml."
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_nb
from segnb.registry import REGISTRIES

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("_"))

@pytest.fixture
def clean_registries():
    """Notebooks run in this process, and their exported cells re-register `__main__` copies of library classes:
    afterwards, put the library's objects back and drop the notebook's own toy entries, so later tests see segnb's classes."""
    for r in REGISTRIES.values(): r.list()   # import every location first, so the snapshot holds the library entries
    snap = {n: (dict(r._items), dict(r._aliases)) for n, r in REGISTRIES.items()}
    yield
    for n, r in REGISTRIES.items():
        items, aliases = snap[n]
        for k, obj in list(r._items.items()):
            if getattr(obj, "__module__", None) == "__main__":
                if k in items: r._items[k] = items[k]
                else: del r._items[k]
        for a, k in list(r._aliases.items()):
            if k not in r._items: del r._aliases[a]
        r._aliases.update({a: k for a, k in aliases.items() if k in r._items})

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(nb, clean_registries):
    flags = get_config(NBS).tst_flags
    flags = flags.split() if isinstance(flags, str) else list(flags or [])
    ok, secs = run_nb(nb, skip_flags=flags, showerr=True)
    assert ok, f"{nb.name} failed (see the traceback above)"
