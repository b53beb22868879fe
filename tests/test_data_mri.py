"The real MRI tissue dataset: built from nilearn's bundled ICBM152 files, passes check-data, loads through a config."
import numpy as np, pytest
pytest.importorskip("nibabel")
from segnb.data.mri import icbm152_dataset, icbm152_slices, nilearn_data_dir
from segnb.data.check import check_dataset
from segnb.data.core import build_dataloaders

def test_written_layout_is_clean_and_split_by_position(tmp_path):
    try: nilearn_data_dir()
    except (ImportError, FileNotFoundError) as e: pytest.skip(str(e))
    root = icbm152_dataset(tmp_path)
    r = check_dataset(root)
    assert r.ok and r.problems == [], r
    sp = icbm152_slices()
    assert r.pairs == {"train": len(sp["train"]), "val": len(sp["val"])} and len(sp["val"]) >= 20
    px = r.pixels["train"][:3] / r.pixels["train"].sum()
    assert px[1] > 0.1 and px[2] > 0.05            # both tissues well represented
    dls = build_dataloaders({"train": {"type": "ICBM152Slices", "split": "train"}, "val": {"type": "ICBM152Slices", "split": "val"},
                             "train_pipeline": [{"type": "RandomCrop", "crop_size": [160, 160]}], "batch_size": 4})
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 160, 160) and set(y.unique().tolist()) <= {0, 1, 2}
    assert dls.vocab == ["background", "grey matter", "white matter"]
