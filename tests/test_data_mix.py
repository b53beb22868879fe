"Dataset wrappers from a config, through the DataLoader: mapping by name, weighted per-epoch redraws, mosaic."
import numpy as np, torch, pytest
from segnb.data.core import build_dataloaders, SegDataError
from segnb.data.mix import WeightedConcatDataset, ConcatDataset
from segnb.data.synthetic import SyntheticScenes

def test_config_wrappers_build_and_load():
    data = dict(
        train=dict(type="ConcatDataset", classes=["background", "circle", "bar"], mapping={"stripes": "bar"},
                   datasets=[dict(type="SyntheticScenes", n=6, size=32, seed=0),
                             dict(type="RepeatDataset", times=2, dataset=dict(type="SyntheticScenes", n=3, size=32, seed=1))]),
        val=dict(type="MultiImageMixDataset", dataset=dict(type="SyntheticScenes", n=2, size=32, split="val"),
                 pipeline=[dict(type="RandomMosaic", prob=1.0, img_scale=[16, 16])]),
        batch_size=4, normalize=False)
    mismatched = dict(type="ConcatDataset", datasets=[dict(type="SyntheticScenes", n=2, size=16),
                      dict(type="MapClasses", classes=["background", "circle"], dataset=dict(type="SyntheticScenes", n=2, size=16))])
    with pytest.raises(SegDataError, match="different classes"):
        build_dataloaders(dict(train=mismatched))
    dls = build_dataloaders({k: v for k, v in data.items() if k != "val"})
    assert len(dls.train_ds) + len(dls.valid_ds) == 12 and dls.vocab == ["background", "circle", "bar"]
    for x, y in dls.train:
        vals = set(y.as_subclass(torch.Tensor).unique().tolist())
        assert vals <= {0, 1, 2, 255}
    mos = build_dataloaders({**data, "train": data["val"], "val": data["val"]})
    x, y = mos.valid.one_batch()
    assert x.shape[-2:] == (32, 32)

def test_weighted_sampling_redraws_each_epoch_through_the_dataloader():
    from segnb.data.core import seg_dataloaders
    a, b = SyntheticScenes(20, 16, seed=0), SyntheticScenes(4, 16, seed=1)
    w = WeightedConcatDataset([a, b], weights=[1, 1], num_samples=16, seed=3)
    dls = seg_dataloaders((w, b), bs=4, shuffle=False, normalize=False)
    e1 = [x.clone() for x, _ in dls.train]; draw1 = w.src.copy()
    e2 = [x.clone() for x, _ in dls.train]; draw2 = w.src.copy()
    assert not np.array_equal(draw1, draw2)
    assert not all(torch.equal(p, q) for p, q in zip(e1, e2))
    assert 0.2 < (draw1 == 1).mean() < 0.8
