"Registry, config and CLI end to end: custom_imports, the 3-level print-config, a non-editable install."
import subprocess, sys, textwrap, zipfile
from pathlib import Path
import pytest, yaml
from conftest import run_cli, ROOT
from segnb.config import Config, ConfigError
from segnb.registry import HEADS, UnknownNameError, get_registry, REGISTRIES

def _write(p: Path, text: str):
    p.parent.mkdir(parents=True, exist_ok=True); p.write_text(textwrap.dedent(text)); return p

@pytest.fixture
def three_level(tmp_path):
    _write(tmp_path/"_base_/models/aspp.yaml", """
        model:
          type: EncoderDecoder
          backbone: {type: TimmBackbone, model_name: resnet50, out_indices: [1, 2, 3, 4]}
          decode_head: {type: ASPPHead, num_classes: 19, channels: 512, dropout_ratio: 0.1}
        optimizer: {type: SGD, lr: 0.01, momentum: 0.9}
        """)
    _write(tmp_path/"_base_/deeplab_city.yaml", """
        _base_: models/aspp.yaml
        data: {type: CityscapesDataset, crop_size: [512, 1024]}
        model: {decode_head: {dropout_ratio: 0.0}}
        """)
    return _write(tmp_path/"configs/run.yaml", """
        _base_: ../_base_/deeplab_city.yaml
        model: {decode_head: {num_classes: 21}}
        optimizer: {_delete_: true, type: AdamW, lr: 0.0001}
        """)

def test_print_config_three_levels(three_level):
    r = run_cli("print-config", three_level, "--cfg-options", "model.decode_head.channels=256", "data.crop_size=[512,512]")
    assert r.returncode == 0, r.stderr
    out = yaml.safe_load(r.stdout)
    head = out["model"]["decode_head"]
    assert head == {"type": "ASPPHead", "num_classes": 21, "channels": 256, "dropout_ratio": 0.0}
    assert out["optimizer"] == {"type": "AdamW", "lr": 0.0001}
    assert out["data"]["crop_size"] == [512, 512]
    assert out["model"]["backbone"]["out_indices"] == [1, 2, 3, 4]

def test_print_config_errors_name_file_and_key(tmp_path, three_level):
    r = run_cli("print-config", three_level, "--cfg-options", "optimizer.lr.x=1")
    assert r.returncode == 2 and "optimizer.lr is a float" in r.stderr and "run.yaml" in r.stderr
    bad = _write(tmp_path/"bad.yaml", "model:\n  type: [unclosed\n")
    r = run_cli("print-config", bad)
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "line" in r.stderr

def test_list_every_registry():
    r = run_cli("list")
    assert r.returncode == 0, r.stderr
    for name in REGISTRIES: assert f"\n{name} (" in "\n" + r.stdout
    assert "  AdamW" in r.stdout
    r = run_cli("list", "optimizers")
    assert r.stdout.splitlines()[0].startswith("OPTIMIZERS") and "BACKBONES" not in r.stdout

def test_every_subcommand_has_help():
    from segnb.cli import build_parser
    p = build_parser()
    cmds = p._subparsers._group_actions[0].choices
    for name in cmds:
        r = run_cli(name, "--help")
        assert r.returncode == 0 and "usage: segnb " + name in r.stdout

def test_custom_imports_builds_user_component(tmp_path, monkeypatch):
    _write(tmp_path/"my_parts/heads.py", """
        from segnb.registry import HEADS
        @HEADS.register(force=True)
        class MyTinyHead:
            def __init__(self, num_classes, channels=8): self.num_classes, self.channels = num_classes, channels
        """)
    (tmp_path/"my_parts/__init__.py").write_text("")
    cfg_path = _write(tmp_path/"cfg.yaml", """
        custom_imports: [my_parts.heads]
        head: {type: MyTinyHead, num_classes: 3}
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = Config.fromfile(cfg_path)
    head = HEADS.build(cfg.head, channels=16)
    assert type(head).__name__ == "MyTinyHead" and head.num_classes == 3 and head.channels == 16
    bad = _write(tmp_path/"bad_imports.yaml", "custom_imports: [no_such_module_xyz]\n")
    with pytest.raises(ImportError, match="no_such_module_xyz"): Config.fromfile(bad)

def test_unknown_name_is_loud():
    with pytest.raises(UnknownNameError, match="HEADS"): HEADS.build({"type": "NoSuchHead"})

def test_plugin_entry_point(tmp_path, monkeypatch):
    "A package exposing a `segnb.plugins` entry point is imported before building."
    import importlib.metadata as md
    pkg = tmp_path/"plug"; _write(pkg/"segnb_plug_demo/__init__.py", """
        from segnb.registry import LOSSES
        @LOSSES.register(force=True)
        def PluginLoss(w=1.0): return ("plugin", w)
        """)
    dist = pkg/"segnb_plug_demo-0.1.dist-info"; dist.mkdir()
    (dist/"METADATA").write_text("Metadata-Version: 2.1\nName: segnb-plug-demo\nVersion: 0.1\n")
    (dist/"entry_points.txt").write_text("[segnb.plugins]\ndemo = segnb_plug_demo\n")
    monkeypatch.syspath_prepend(str(pkg))
    from segnb import registry
    assert "demo" in registry.load_plugins()
    assert registry.LOSSES.build("PluginLoss", w=2.0) == ("plugin", 2.0)

@pytest.mark.slow
def test_non_editable_install(tmp_path):
    "`pip install .` gives a working package and `segnb` command, with configs as package data."
    wheel_dir, target = tmp_path/"wheel", tmp_path/"site"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    whl = next(wheel_dir.glob("segnb-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    assert "segnb/configs/_base_/default_runtime.yaml" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(whl)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    env = {"PYTHONPATH": str(target)}
    r = run_cli("list", "optimizers", cwd=tmp_path, env=env)   # the console script from the venv, importing the installed copy
    assert r.returncode == 0, r.stderr
    code = "import segnb, pathlib; p = pathlib.Path(segnb.__file__); print(p); print((p.parent/'configs/_base_/default_runtime.yaml').exists())"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**__import__('os').environ, **env}, capture_output=True, text=True)
    assert str(target) in r.stdout and "True" in r.stdout, r.stdout + r.stderr
    script = target/"bin"/"segnb"
    assert script.exists()
    r = subprocess.run([str(script), "list", "optimizers"], cwd=tmp_path, env={**__import__('os').environ, **env}, capture_output=True, text=True)
    assert r.returncode == 0 and "AdamW" in r.stdout, r.stderr
