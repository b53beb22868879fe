"""Helpers shared by the benchmark scripts for running MMSegmentation beside segnb (stdlib only: they are imported both
under segnb's .venv and under the peers' python, ~/peers/litevenv; see /work/shared/bench/README.md)."""
import importlib.util
import sys
import types


def stub_mmcv_ext() -> str:
    """mmseg 1.2.2 imports mmcv.ops at import time; mmcv-lite has no compiled `mmcv._ext`. Install a stand-in whose ops
    raise if called (no benchmark here calls one). Returns what was found, for the report."""
    if importlib.util.find_spec("mmcv") is None: return "mmcv not installed"
    try:
        import mmcv._ext  # noqa: F401
        return "mmcv (compiled ops)"
    except ImportError:
        class _NoOps(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"): raise AttributeError(name)
                def _missing(*a, **k): raise NotImplementedError(f"mmcv._ext.{name}: mmcv-lite has no compiled ops")
                return _missing
        sys.modules["mmcv._ext"] = _NoOps("mmcv._ext")
        return "mmcv-lite, mmcv._ext stubbed (ops raise if called)"


def strip_mmseg_cfg(o):
    "An MMSeg model config for one CPU process with nothing to download: SyncBN -> BN, init_cfg/pretrained -> None (in place)."
    if isinstance(o, dict):
        if o.get("type") == "SyncBN": o["type"] = "BN"
        for k in list(o):
            if k in ("init_cfg", "pretrained"): o[k] = None
            else: strip_mmseg_cfg(o[k])
    elif isinstance(o, (list, tuple)):
        for v in o: strip_mmseg_cfg(v)
    return o
