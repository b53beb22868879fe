"""segnb.data.convert on tiny raw-format fixtures built here (label-id PNGs, SBD .mat structs, 459-class .mat label maps,
COCO-Stuff ids, zips of LoveDA / ISPRS / iSAID / retinal sets, STARE's tar of .ppm.gz, NIfTI volumes, NYU v7 and v7.3 .mat),
each with known expected ids; plus resumability, failure reporting, the process pool, the CLI and the dataset card."""
import gzip, io, tarfile, zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segnb.data.catalog import CATALOG
from segnb.data.convert import (CONVERTERS, SYNAPSE_MAP, ConvertError, cityscapes_to_train_id, context_to_index,
                                coco_stuff_to_train_id, convert_dataset, dataset_card, load_sbd_mask, output_complete,
                                tile_boxes, window_starts)
from conftest import run_cli
from segnb.cli import main as segnb_main


def cli(capsys, *args):
    "Run `segnb ARGS` in this process; returns (exit code, stdout, stderr)."
    try: code = segnb_main([str(a) for a in args])
    except SystemExit as e: code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err

Q = dict(progress=False, verbose=False, card=False)


def png(a, mode=None):
    b = io.BytesIO(); Image.fromarray(np.asarray(a), mode).save(b, "PNG"); return b.getvalue()


def img_bytes(a, fmt):
    b = io.BytesIO(); Image.fromarray(np.asarray(a)).save(b, fmt); return b.getvalue()


def save(a, p, fmt=None):
    p = Path(p); p.parent.mkdir(parents=True, exist_ok=True); Image.fromarray(np.asarray(a)).save(p, fmt); return p


def write_zip(path, members):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items(): z.writestr(n, d)
    return path


def arr(p): return np.asarray(Image.open(p))


def color_mask(ids, palette, offset=0):
    "Index map → RGB colour mask (`ids - offset` indexes `palette`; negative → black)."
    pal = np.vstack([np.array(palette), [[0, 0, 0]]]).astype(np.uint8)
    idx = np.where(ids - offset < 0, len(pal) - 1, ids - offset)
    return pal[idx]


# ---------------------------------------------------------------------------------------------------------- Cityscapes

def make_cityscapes(raw, n=2):
    rng = np.random.default_rng(1)
    for split, city in (("train", "aachen"), ("val", "lindau")):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            save(rng.choice([0, 1, 7, 8, 11, 24, 26, 33, 4], (6, 10)).astype(np.uint8), raw / f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")
            save(rng.integers(0, 255, (6, 10, 3), dtype=np.uint8), raw / f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")


def test_cityscapes_train_ids_pool_and_resume(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_cityscapes(raw)
    rep = convert_dataset("cityscapes", raw, out, nproc=2, **Q)
    assert rep.ok and rep.written == 8                          # 4 masks + 4 images placed
    src = raw / "gtFine/val/lindau/lindau_000001_000019_gtFine_labelIds.png"
    dst = out / "gtFine/val/lindau/lindau_000001_000019_gtFine_labelTrainIds.png"
    ids = arr(src)
    want = np.full(ids.shape, 255); lut = {7: 0, 8: 1, 11: 2, 24: 11, 26: 13, 33: 18}
    for k, v in lut.items(): want[ids == k] = v
    assert (arr(dst) == want).all()
    assert (out / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").exists()
    assert (out / "train.txt").read_text().split() == ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019"]
    # the converted folder is what the registry entry reads
    from segnb.registry import DATASETS
    ds = DATASETS.build({"type": "CityscapesDataset", "data_root": str(out), "split": "val"})
    assert len(ds) == 2 and (np.asarray(ds[1][1]) == want).all()
    # re-run: everything skipped; a truncated output is redone, nothing else
    rep2 = convert_dataset("cityscapes", raw, out, nproc=2, **Q)
    assert rep2.written == 0 and len(rep2.skipped) == 8
    dst.write_bytes(dst.read_bytes()[:30])
    assert not output_complete(dst)
    rep3 = convert_dataset("cityscapes", raw, out, **Q)
    assert rep3.written == 1 and len(rep3.skipped) == 7 and (arr(dst) == want).all()
    assert "| skipped | 7 | output exists and is complete" in rep3.table()


def test_cityscapes_polygons_only_is_a_clear_error(tmp_path):
    (tmp_path / "gtFine/train/x").mkdir(parents=True)
    (tmp_path / "gtFine/train/x/x_000000_000001_gtFine_polygons.json").write_text("{}")
    with pytest.raises(ConvertError, match="labelIds"):
        convert_dataset("cityscapes", tmp_path, tmp_path, **Q)


# ------------------------------------------------------------------------------------------------------------- VOC aug

def test_voc_aug_sbd_mat_and_splits(tmp_path):
    from scipy.io import loadmat, savemat
    dev = tmp_path / "VOCdevkit"; voc = dev / "VOC2012"; sbd = dev / "VOCaug/dataset"
    ids = {f"2008_{i:06d}": i for i in range(1, 9)}
    for s in ids: save(np.zeros((5, 7, 3), np.uint8), voc / f"JPEGImages/{s}.jpg")
    voc_train, voc_val = ["2008_000001", "2008_000002"], ["2008_000003"]
    sbd_train, sbd_val = ["2008_000002", "2008_000004", "2008_000005", "2008_000003"], ["2008_000006", "2008_000007"]
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(voc_train) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(voc_val) + "\n")
    for s in voc_train + voc_val:                                      # VOC masks: palette PNGs with 255 boundaries
        m = np.full((5, 7), 15, np.uint8); m[0] = 255
        im = Image.fromarray(m, "L").convert("P"); save(im, voc / f"SegmentationClass/{s}.png")
    (sbd / "cls").mkdir(parents=True)
    for s in sbd_train + sbd_val:
        seg = (np.arange(35).reshape(5, 7) % 21).astype(np.uint8)
        savemat(sbd / f"cls/{s}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1, 1)),
                                                   "CategoriesPresent": np.unique(seg)[1:].astype(np.uint8)}})
    (sbd / "train.txt").write_text("\n".join(sbd_train) + "\n"); (sbd / "val.txt").write_text("\n".join(sbd_val) + "\n")
    # our fixture has SBD's struct layout: MMSeg's access path works on it
    assert loadmat(sbd / "cls/2008_000004.mat")["GTcls"][0]["Segmentation"][0].shape == (5, 7)
    rep = convert_dataset("voc_aug", dev, dev, nproc=2, **Q)
    assert rep.ok, rep.table()
    lists = voc / "ImageSets/Segmentation"
    # train_aug = SBD train+val + VOC train − VOC val ; aug = SBD − VOC train − VOC val
    assert lists.joinpath("trainaug.txt").read_text().split() == ["2008_000001", "2008_000002", "2008_000004", "2008_000005", "2008_000006", "2008_000007"]
    assert lists.joinpath("aug.txt").read_text().split() == ["2008_000004", "2008_000005", "2008_000006", "2008_000007"]
    aug = voc / "SegmentationClassAug"
    assert (arr(aug / "2008_000004.png") == np.arange(35).reshape(5, 7) % 21).all()      # from the .mat
    assert arr(aug / "2008_000002.png")[0, 0] == 255 and arr(aug / "2008_000002.png")[1, 1] == 15   # VOC's own mask wins
    assert (load_sbd_mask(sbd / "cls/2008_000006.mat") == np.arange(35).reshape(5, 7) % 21).all()
    assert "train_aug: 6 ids" in rep.table()


# ------------------------------------------------------------------------------------------------------ Pascal Context

def test_pascal_context_459_to_60(tmp_path):
    from scipy.io import savemat
    v = tmp_path / "VOC2010"
    lab = np.array([[0, 2, 259, 13], [458, 115, 300, 9]], np.uint16)       # 13 and 300 are not among the 59 → background
    for s in ("2008_000002", "2008_000003"):
        (v / "trainval").mkdir(parents=True, exist_ok=True)
        savemat(v / f"trainval/{s}.mat", {"LabelMap": lab})
        save(np.zeros((2, 4, 3), np.uint8), v / f"JPEGImages/{s}.jpg")
    (v / "ImageSets/Main").mkdir(parents=True)
    (v / "ImageSets/Main/train.txt").write_text("2008_000002\n2008_000099\n"); (v / "ImageSets/Main/val.txt").write_text("2008_000003\n")
    rep = convert_dataset("pascal_context", v, v, **Q)
    assert rep.ok and rep.written == 2
    assert arr(v / "SegmentationClassContext/2008_000002.png").tolist() == [[0, 1, 35, 0], [59, 24, 0, 2]]
    assert (v / "ImageSets/SegmentationContext/train.txt").read_text().split() == ["2008_000002"]   # only labelled ids
    assert context_to_index(lab, 59).tolist() == [[255, 0, 34, 255], [58, 23, 255, 1]]
    from segnb.registry import DATASETS
    ds59 = DATASETS.build({"type": "PascalContextDataset59", "data_root": str(v), "split": "train"})
    assert np.asarray(ds59[0][1]).tolist() == [[255, 0, 34, 255], [58, 23, 255, 1]]


# --------------------------------------------------------------------------------------------------------- COCO-Stuff

def test_coco_stuff_164k_and_10k(tmp_path):
    from scipy.io import savemat
    raw = tmp_path / "coco"
    m = np.array([[0, 11, 12, 181], [255, 91, 90, 26]], np.uint8)
    save(m, raw / "annotations/val2017/000000000139.png"); save(np.zeros((2, 4, 3), np.uint8), raw / "images/val2017/000000000139.jpg")
    rep = convert_dataset("coco_stuff164k", raw, raw, **Q)
    assert rep.ok and arr(raw / "annotations/val2017/000000000139_labelTrainIds.png").tolist() == [[0, 255, 11, 170], [255, 80, 255, 24]]
    assert coco_stuff_to_train_id(np.arange(256)).max() == 255 and len(set(coco_stuff_to_train_id(np.arange(182)).tolist()) - {255}) == 171
    raw10 = tmp_path / "c10k"
    (raw10 / "imageLists").mkdir(parents=True)
    (raw10 / "imageLists/train.txt").write_text("COCO_train2014_000000000077\n"); (raw10 / "imageLists/test.txt").write_text("COCO_train2014_000000000078\n")
    for s in ("COCO_train2014_000000000077", "COCO_train2014_000000000078"):
        save(np.zeros((2, 3, 3), np.uint8), raw10 / f"images/{s}.jpg")
        (raw10 / "annotations").mkdir(exist_ok=True)
        savemat(raw10 / f"annotations/{s}.mat", {"S": np.array([[0, 1, 13], [182, 12, 2]], np.uint16)})
    out10 = tmp_path / "out10"
    rep = convert_dataset("coco_stuff10k", raw10, out10, **Q)
    assert rep.ok
    assert arr(out10 / "annotations/train2014/COCO_train2014_000000000077_labelTrainIds.png").tolist() == [[0, 1, 12], [171, 0, 2]]
    assert (out10 / "images/test2014/COCO_train2014_000000000078.jpg").exists()


# ------------------------------------------------------------------------------------------------------ LoveDA, CamVid

def test_loveda_unzip_layout(tmp_path):
    for z in ("Train", "Val"):
        write_zip(tmp_path / f"{z}.zip", {f"{z}/{loc}/{kind}/{i}.png": png(np.full((4, 4), i, np.uint8))
                                          for loc, i in (("Rural", 1), ("Urban", 2)) for kind in ("images_png", "masks_png")})
    write_zip(tmp_path / "Test.zip", {"Test/Urban/images_png/9.png": png(np.zeros((4, 4), np.uint8))})
    out = tmp_path / "loveDA"
    rep = convert_dataset("loveda", tmp_path, out, **Q)
    assert rep.ok and rep.written == 9
    assert sorted(p.name for p in (out / "ann_dir/val").iterdir()) == ["1.png", "2.png"]
    assert arr(out / "ann_dir/train/2.png").max() == 2 and (out / "img_dir/test/9.png").exists()
    assert not (out / "ann_dir/test").exists()


def test_camvid_void_ignored(tmp_path):
    raw = tmp_path / "camvid"
    for s in ("0001TP_006690", "Seq05VD_f00000"):
        save(np.zeros((2, 3, 3), np.uint8), raw / f"images/{s}.png")
        save(np.array([[30, 31, 0], [17, 21, 29]], np.uint8), raw / f"labels/{s}_P.png")
    (raw / "valid.txt").write_text("Seq05VD_f00000.png\n")
    rep = convert_dataset("camvid", raw, raw, **Q)
    assert rep.ok and arr(raw / "ann_dir/val/Seq05VD_f00000.png").tolist() == [[255, 30, 0], [17, 21, 29]]
    assert (raw / "img_dir/train/0001TP_006690.png").exists()
    assert CATALOG["camvid"].classes[30] == "Wall" and CATALOG["camvid"].classes[17] == "Road"


# ---------------------------------------------------------------------------------------------- ISPRS tiling, iSAID

def _isprs_ids(h, w, seed):
    return np.random.default_rng(seed).integers(0, 7, (h, w))


def test_potsdam_tiles_and_colours(tmp_path):
    h, w = 40, 60
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ids = _isprs_ids(h, w, 1)
    pal = CATALOG["potsdam"].palette
    lab_rgb = color_mask(ids, pal, offset=1)                                 # 0 = black boundary
    write_zip(tmp_path / "2_Ortho_RGB.zip", {"2_Ortho_RGB/top_potsdam_2_10_RGB.tif": img_bytes(img, "TIFF"),
                                              "2_Ortho_RGB/top_potsdam_5_15_RGB.tif": img_bytes(img, "TIFF")})
    write_zip(tmp_path / "5_Labels_all_noBoundary.zip", {"top_potsdam_2_10_label_noBoundary.tif": img_bytes(lab_rgb, "TIFF"),
                                                         "top_potsdam_5_15_label_noBoundary.tif": img_bytes(lab_rgb, "TIFF")})
    out = tmp_path / "potsdam"
    opts = dict(clip_size=16, stride_size=8)
    rep = convert_dataset("potsdam", tmp_path, out, nproc=2, **Q, **opts)
    boxes = tile_boxes(h, w, 16, 8)
    assert rep.ok and rep.written == 4 * len(boxes) and len(boxes) == len(window_starts(40, 16, 8)) * len(window_starts(60, 16, 8))
    assert window_starts(60, 16, 8) == [0, 8, 16, 24, 32, 40, 44]
    x0, y0, x1, y1 = boxes[-1]
    assert (x0, y0, x1, y1) == (44, 24, 60, 40)
    assert (arr(out / f"img_dir/train/2_10_{x0}_{y0}_{x1}_{y1}.png") == img[y0:y1, x0:x1]).all()
    assert (arr(out / f"ann_dir/val/5_15_{x0}_{y0}_{x1}_{y1}.png") == ids[y0:y1, x0:x1]).all()
    rep2 = convert_dataset("potsdam", tmp_path, out, **Q, **opts)               # markers: nothing redone
    assert rep2.written == 0 and len(rep2.skipped) == 4
    (out / f"ann_dir/val/5_15_{x0}_{y0}_{x1}_{y1}.png").unlink()               # one tile missing: that source only
    rep3 = convert_dataset("potsdam", tmp_path, out, **Q, **opts)
    assert rep3.written == len(boxes) and len(rep3.skipped) == 3
    # MMSeg's published tile count (3456 train images = 24 tiles × 144) is stride 512 here
    assert len(tile_boxes(6000, 6000, 512, 512)) == 144


def test_vaihingen_tiles(tmp_path):
    h, w = 20, 25
    img = np.random.default_rng(2).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ids = _isprs_ids(h, w, 3)
    lab = color_mask(ids, CATALOG["vaihingen"].palette, offset=1)
    write_zip(tmp_path / "ISPRS_semantic_labeling_Vaihingen.zip", {"top/top_mosaic_09cm_area1.tif": img_bytes(img, "TIFF"),
                                                                    "dsm/dsm_09cm_matching_area1.tif": img_bytes(img[..., 0], "TIFF")})
    write_zip(tmp_path / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
              {"top_mosaic_09cm_area1_noBoundary.tif": img_bytes(lab, "TIFF"), "top_mosaic_09cm_area9_noBoundary.tif": img_bytes(lab, "TIFF")})
    out = tmp_path / "v"
    rep = convert_dataset("vaihingen", tmp_path, out, **Q, clip_size=16, stride_size=8)
    assert rep.ok and any("area9" in lab for lab, _ in rep.skipped)
    tiles = sorted(p.name for p in (out / "ann_dir/train").iterdir())
    assert tiles == sorted(f"area1_{x0}_{y0}_{x1}_{y1}.png" for x0, y0, x1, y1 in tile_boxes(h, w, 16, 8))
    assert (arr(out / "ann_dir/train/area1_9_4_25_20.png") == ids[4:20, 9:25]).all()


def test_isaid_patches_padding(tmp_path):
    pal = CATALOG["isaid"].palette
    img = np.random.default_rng(4).integers(0, 255, (12, 30, 3), dtype=np.uint8)      # shorter than a patch: padded
    ids = np.random.default_rng(5).integers(0, 16, (12, 30))
    write_zip(tmp_path / "train/images/part1.zip", {"images/P0001.png": png(img)})
    write_zip(tmp_path / "train/Semantic_masks/images.zip", {"images/P0001_instance_color_RGB.png": png(color_mask(ids, pal))})
    write_zip(tmp_path / "test/images/part1.zip", {"images/P0009.png": png(img)})
    out = tmp_path / "iSAID"
    rep = convert_dataset("isaid", tmp_path, out, **Q, patch_size=16, overlap=6)
    assert rep.ok
    assert window_starts(30, 16, 10) == [0, 10, 14]
    names = sorted(p.name for p in (out / "ann_dir/train").iterdir())
    assert names == ["P0001_0_16_0_16_instance_color_RGB.png", "P0001_0_16_10_26_instance_color_RGB.png", "P0001_0_16_14_30_instance_color_RGB.png"]
    m = arr(out / "ann_dir/train/P0001_0_16_14_30_instance_color_RGB.png")
    assert (m[:12] == ids[:, 14:30]).all() and (m[12:] == 255).all()              # label padding is ignore
    i = arr(out / "img_dir/train/P0001_0_16_14_30.png")
    assert (i[:12] == img[:, 14:30]).all() and (i[12:] == 0).all()
    assert (out / "img_dir/test/P0009.png").exists()


# ------------------------------------------------------------------------------------------------------ retinal vessels

def vessel(h=6, w=8, seed=0):
    return (np.random.default_rng(seed).random((h, w)) > 0.5).astype(np.uint8) * 255


def gif(a):
    b = io.BytesIO(); Image.fromarray(a).convert("P").save(b, "GIF"); return b.getvalue()


def test_drive(tmp_path):
    v = vessel()
    write_zip(tmp_path / "training.zip", {"training/images/21_training.tif": img_bytes(np.zeros((6, 8, 3), np.uint8), "TIFF"),
                                          "training/1st_manual/21_manual1.gif": gif(v),
                                          "training/mask/21_training_mask.gif": gif(v)})
    write_zip(tmp_path / "test.zip", {"test/images/01_test.tif": img_bytes(np.zeros((6, 8, 3), np.uint8), "TIFF"),
                                      "test/1st_manual/01_manual1.gif": gif(v)})
    out = tmp_path / "DRIVE"
    rep = convert_dataset("drive", tmp_path, out, **Q)
    assert rep.ok and rep.written == 4
    assert (arr(out / "annotations/training/21_manual1.png") == (v > 0)).all() and (out / "images/validation/01.png").exists()
    assert set(np.unique(arr(out / "annotations/validation/01_manual1.png"))) <= {0, 1}
    from segnb.registry import DATASETS
    assert len(DATASETS.build({"type": "DRIVEDataset", "data_root": str(out), "split": "training"})) == 1


def ppm_gz(a): return gzip.compress(img_bytes(a, "PPM"))


def tar(path, members):
    with tarfile.open(path, "w") as t:
        for n, d in members.items():
            ti = tarfile.TarInfo(n); ti.size = len(d); t.addfile(ti, io.BytesIO(d))


def test_stare(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    labs = {i: np.repeat(vessel(seed=i)[..., None], 3, 2) for i in (1, 2)}
    tar(tmp_path / "stare-images.tar", {f"im000{i}.ppm.gz": ppm_gz(rgb) for i in (1, 2)})
    tar(tmp_path / "labels-ah.tar", {f"im000{i}.ah.ppm.gz": ppm_gz(labs[i]) for i in (1, 2)})
    tar(tmp_path / "labels-vk.tar", {f"im000{i}.vk.ppm.gz": ppm_gz(labs[i]) for i in (1, 2)})
    out = tmp_path / "STARE"
    rep = convert_dataset("stare", tmp_path, out, **Q, n_train=1)
    assert rep.ok and rep.written == 6
    assert (arr(out / "annotations/validation/im0002.ah.png") == (labs[2][..., 0] > 0)).all()
    assert (out / "images/training/im0001.png").exists() and (out / "annotations/training/im0001.vk.png").exists()


def test_chase_db1(tmp_path):
    m = {}
    for k in ("01L", "01R", "02L"):
        m[f"Image_{k}.jpg"] = img_bytes(np.zeros((6, 8, 3), np.uint8), "JPEG")
        m[f"Image_{k}_1stHO.png"] = png(vessel(seed=len(m))); m[f"Image_{k}_2ndHO.png"] = png(vessel(seed=len(m)))
    write_zip(tmp_path / "CHASEDB1.zip", m)
    out = tmp_path / "CHASE_DB1"
    rep = convert_dataset("chase_db1", tmp_path, out, **Q, n_train=2)
    assert rep.ok and rep.written == 9
    assert sorted(p.name for p in (out / "images/training").iterdir()) == ["Image_01L.png", "Image_01R.png"]
    assert (arr(out / "annotations/validation/Image_02L_1stHO.png") == (arr_from(m["Image_02L_1stHO.png"]) > 0)).all()


def arr_from(b): return np.asarray(Image.open(io.BytesIO(b)))


def test_hrf(tmp_path):
    for g, suf in (("healthy", "h"), ("glaucoma", "g"), ("diabetic_retinopathy", "dr")):
        write_zip(tmp_path / f"{g}.zip", {f"0{i}_{suf}.jpg": img_bytes(np.zeros((6, 8, 3), np.uint8), "JPEG") for i in (1, 2)})
        write_zip(tmp_path / f"{g}_manualsegm.zip", {f"0{i}_{suf}.tif": img_bytes(vessel(seed=i), "TIFF") for i in (1, 2)})
    out = tmp_path / "HRF"
    rep = convert_dataset("hrf", tmp_path, out, **Q, n_train=1)
    assert rep.ok and rep.written == 12
    assert sorted(p.name for p in (out / "annotations/training").iterdir()) == ["01_dr.png", "01_g.png", "01_h.png"]
    assert (arr(out / "annotations/validation/02_g.png") == (vessel(seed=2) > 0)).all()


# --------------------------------------------------------------------------------------------------- Synapse (NIfTI)

def test_synapse_nifti_slices(tmp_path):
    import nibabel as nib
    tr = tmp_path / "RawData/Training"
    (tr / "img").mkdir(parents=True); (tr / "label").mkdir()
    rng = np.random.default_rng(0)
    vols = {}
    for case in ("0001", "0002"):
        ct = rng.uniform(-300, 400, (6, 5, 3)).astype(np.float32)
        lab = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13], (6, 5, 3)).astype(np.uint8)
        nib.save(nib.Nifti1Image(ct, np.eye(4)), tr / f"img/img{case}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), tr / f"label/label{case}.nii.gz")
        vols[case] = (ct, lab)
    (tr / "train.txt").write_text("img0001.nii.gz\n"); (tr / "val.txt").write_text("img0002.nii.gz\n")
    out = tmp_path / "synapse"
    rep = convert_dataset("synapse", tmp_path / "RawData", out, **Q)
    assert rep.ok and rep.written == 12
    ct, lab = vols["0002"]
    for c in range(3):
        want = np.zeros((6, 5), np.uint8)
        for k, v in SYNAPSE_MAP.items(): want[np.flip(lab[:, :, c], 1) == k] = v
        assert (arr(out / f"ann_dir/val/case0002_slice{c:03d}.png") == want).all()
    ref = (np.flip(np.clip(ct[:, :, 1], -125, 275), 1) + 125) / 400 * 255
    got = arr(out / "img_dir/val/case0002_slice001.jpg").astype(float)
    assert got.shape[:2] == (6, 5) and np.abs(got[..., 0] - ref).mean() < 12          # JPEG, lossy
    assert sorted(p.name for p in (out / "ann_dir/train").iterdir()) == [f"case0001_slice00{c}.png" for c in range(3)]


# ------------------------------------------------------------------------------------------------------------- NYU

def _nyu_arrays(n=3, h=5, w=6):
    rng = np.random.default_rng(0)
    imgs = np.stack([np.broadcast_to(np.array([40 * k + 20, 100, 200 - 30 * k], np.uint8), (h, w, 3)) for k in range(n)], -1)
    return np.ascontiguousarray(imgs), rng.uniform(0.5, 9.0, (h, w, n)).astype(np.float32)    # flat colours: JPEG-safe


def _check_nyu(out, imgs, deps):
    for i, s in ((1, "train"), (3, "train"), (2, "test")):
        d = arr(out / f"annotations/{s}/nyu_{i:04d}.png")
        assert d.dtype == np.uint16 and (d == np.rint(deps[..., i - 1] * 1000)).all()
        im = arr(out / f"images/{s}/nyu_{i:04d}.jpg").astype(int)
        assert im.shape == (5, 6, 3) and np.abs(im - imgs[..., i - 1]).max() <= 6


def test_nyu_v7_mat(tmp_path):
    from scipy.io import savemat
    imgs, deps = _nyu_arrays()
    savemat(tmp_path / "nyu_depth_v2_labeled.mat", {"images": imgs, "depths": deps})
    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])})
    out = tmp_path / "nyu"
    rep = convert_dataset("nyu", tmp_path, out, nproc=2, **Q)
    assert rep.ok and rep.written == 6
    _check_nyu(out, imgs, deps)
    assert convert_dataset("nyu", tmp_path, out, **Q).written == 0


def test_nyu_v73_hdf5_mat(tmp_path):
    h5py = pytest.importorskip("h5py")
    imgs, deps = _nyu_arrays()
    p = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(p, "w", userblock_size=512) as f:                # MATLAB v7.3: HDF5 after a 512-byte header
        f["images"] = imgs.transpose(3, 2, 1, 0); f["depths"] = deps.transpose(2, 1, 0)
    with open(p, "r+b") as f: f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64")
    from scipy.io import savemat
    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])})
    rep = convert_dataset("nyu", tmp_path, tmp_path / "nyu", **Q)
    assert rep.ok
    _check_nyu(tmp_path / "nyu", imgs, deps)


# ------------------------------------------------------------------------------------- failures, CLI, dataset card

def test_corrupt_input_is_reported_not_fatal(tmp_path, capsys):
    raw = tmp_path / "raw"; make_cityscapes(raw, n=1)
    bad = raw / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    bad.write_bytes(b"not a png")
    rep = convert_dataset("cityscapes", raw, raw, **Q)
    assert not rep.ok and rep.written == 1 and "aachen_000000_000019_gtFine_labelIds.png" in rep.table()
    code, out, _ = cli(capsys, "convert", "cityscapes", raw, raw, "--no-card")
    assert code == 1 and "| failed | 1 |" in out


def test_cli_convert(tmp_path, capsys):
    raw = tmp_path / "raw"; make_cityscapes(raw)
    code, out, err = cli(capsys, "convert", "cityscapes", raw, tmp_path / "out", "--nproc", "2")
    assert code == 0, err
    assert "| written | 8 |" in out and (tmp_path / "out/DATASET_CARD.md").exists()
    assert (tmp_path / "out/dataset_card_samples.png").stat().st_size > 1000
    code, _, err = cli(capsys, "convert", "potsdam", raw, tmp_path / "p", "--opt", "clip_size")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = cli(capsys, "convert", "nosuch", raw, raw)
    assert code == 2 and "no dataset named" in err
    code, _, err = cli(capsys, "convert", "voc_aug", raw, raw)
    assert code == 2 and "VOC2012" in err
    r = run_cli("convert", "--list", cwd=tmp_path)                                                # the console script
    assert r.returncode == 0 and all(n in r.stdout for n in ("cityscapes:", "voc_aug:", "potsdam:", "nyu:"))


def test_dataset_card_pixel_frequencies(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    m1 = np.array([[0, 1, 1], [2, 2, 2]], np.uint8); m2 = np.array([[3, 3, 3], [0, 0, 255]], np.uint8)
    for split, m in (("training", m1), ("validation", m2)):
        save(m, root / f"annotations/{split}/a.png"); save(np.zeros((2, 3, 3), np.uint8), root / f"images/{split}/a.jpg")
    md, card = dataset_card(root, "ade20k", write=True)
    # reduce_zero_label: 0 → ignore, 1 → class 0 (wall), 2 → 1 (building), 3 → 2 (sky)
    assert "| 0 | wall | `#787878` | 2 | 40.00 | 0 | 0.00 |" in md
    assert "| 1 | building | `#b47878` | 3 | 60.00 | 0 | 0.00 |" in md
    assert "| 2 | sky | `#06e6e6` | 0 | 0.00 | 3 | 100.00 |" in md
    assert "| 255 | *ignored* | | 1 | – | 3 | – |" in md
    assert card.read_text() == md and (root / "dataset_card_samples.png").exists()
    with pytest.raises(FileNotFoundError, match="no masks"):
        dataset_card(tmp_path / "empty", "ade20k")


def test_every_catalog_converter_exists():
    for info in CATALOG.values():
        if info.converter: assert info.converter in CONVERTERS, info.name
