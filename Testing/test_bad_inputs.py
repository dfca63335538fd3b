"""Bad input, every command: one ``error:`` line naming the input and the problem, exit code 1, no traceback,
and nothing written. Table-driven: each row is (command line with placeholders, words the error must hold)."""

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.phantom import generate_phantom, write_phantom_case


def _image(array, reference=None, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    if reference is not None:
        image.CopyInformation(reference)
    else:
        image.SetSpacing(spacing[: image.GetDimension()])
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad inputs by name: paths as strings."""
    root = tmp_path_factory.mktemp("inputs")
    case = generate_phantom(seed=0, trus_size=(48, 48, 48), trus_spacing=(1.6, 1.6, 1.6),
                            mri_size=(40, 40, 28), mri_spacing=(2.0, 2.0, 3.0))
    write_phantom_case(case, root, "case")
    paths = {
        "trus": root / "fixed_images/case.nii.gz", "mri": root / "moving_images/case.nii.gz",
        "trus_labels": root / "fixed_labels/case.nii.gz", "mri_labels": root / "moving_labels/case.nii.gz",
        "tumour": root / "fixed_tumour_labels/case.nii.gz", "truth": root / "transforms/case.h5",
    }
    trus_array = sitk.GetArrayFromImage(case.trus)

    def write(name, image):
        paths[name] = root / name
        sitk.WriteImage(image, str(paths[name]))

    write("gland.nii.gz", case.trus_labels[0])
    write("mri_gland.nii.gz", case.mri_labels[0])
    write("flat.nii.gz", _image(trus_array[10]))
    write("four.nii.gz", sitk.JoinSeries([case.trus, case.trus]))
    write("vector.nrrd", sitk.Compose([case.trus] * 3))
    nan, inf = trus_array.copy(), trus_array.copy()
    nan[3, 3, 3], inf[4, 4, 4] = np.nan, np.inf
    write("nan.nii.gz", _image(nan, case.trus))
    write("inf.nrrd", _image(inf, case.trus))
    write("empty.nii.gz", _image(np.zeros(trus_array.shape, np.uint8), case.trus))
    write("two_channels.nii.gz", sitk.JoinSeries(case.trus_labels[:2]))
    write("seg_float.nii.gz", _image(trus_array, case.trus))
    paths["garbage.nii.gz"] = root / "garbage.nii.gz"
    paths["garbage.nii.gz"].write_bytes(b"\x00not an image at all" * 10)
    paths["huge.nhdr"] = root / "huge.nhdr"
    paths["huge.nhdr"].write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 4000 4000 4000\n"
                                  "spacings: 1 1 1\nencoding: raw\nendian: little\ndata file: huge.raw\n\n")
    (root / "huge.raw").write_bytes(b"")  # the header promises 238 GiB; the check must not read the data
    linear = root / "linear.tfm"
    sitk.WriteTransform(sitk.AffineTransform(3), str(linear))
    paths["linear.tfm"] = linear
    paths["plane.tfm"] = root / "plane.tfm"
    sitk.WriteTransform(sitk.AffineTransform(2), str(paths["plane.tfm"]))
    paths["garbage.tfm"] = root / "garbage.tfm"
    paths["garbage.tfm"].write_text("#Insight Transform File V1.0\nTransform: NoSuchTransform\n")
    paths["points.csv"] = root / "points.csv"
    paths["points.csv"].write_text("label,x,y,z\nt1,10,20,30\n")
    paths["bad_points.csv"] = root / "bad_points.csv"
    paths["bad_points.csv"].write_text("name,a,b\n1,2,3\n")
    paths["bad.mrk.json"] = root / "bad.mrk.json"
    paths["bad.mrk.json"].write_text(json.dumps({"markups": [{"coordinateSystem": "XYZ", "controlPoints": []}]}))
    paths["garbage.pt"] = root / "garbage.pt"
    paths["garbage.pt"].write_bytes(b"definitely not a checkpoint")
    paths["foreign.pt"] = root / "foreign.pt"
    torch.save({"model": "something-else", "state_dict": {}}, paths["foreign.pt"])
    paths["unknown_key.yaml"] = root / "unknown_key.yaml"
    paths["unknown_key.yaml"].write_text("iterations: 2\nbatchsize: 4\n")
    paths["wrong_type.yaml"] = root / "wrong_type.yaml"
    paths["wrong_type.yaml"].write_text("iterations: many\n")
    paths["broken.yaml"] = root / "broken.yaml"
    paths["broken.yaml"].write_text("iterations: [2\n")
    paths["missing"] = root / "does_not_exist.nii.gz"
    return {key: str(value) for key, value in paths.items()}


REG = "register --fixed {trus} --moving {mri} --method rigid --transform-out {out}/T.tfm"
WARP = "warp --moving {mri} --reference {trus} --transform {linear.tfm} --out {out}/w.nii.gz"
MAP = "map-points --points {points.csv} --transform {linear.tfm} --out {out}/p.csv"
SEG = "segment --trus {trus} --out {out}/s.seg.nrrd --device cpu"
EVR = "evaluate registration --fixed-label {trus_labels} --moving-label {mri_labels} --out {out}/m.json"
EVS = "evaluate segmentation --pred {tumour} --gt {tumour} --out {out}/m.json"
DEMO = "demo --out {out}/demo --fixed {trus} --moving {mri} --device cpu"

CASES = [
    # register
    (REG.replace("{trus}", "{missing}"), ["--fixed", "no such file"]),
    (REG.replace("{trus}", "{garbage.nii.gz}"), ["--fixed", "cannot read"]),
    (REG.replace("{trus}", "{flat.nii.gz}"), ["--fixed", "3D"]),
    (REG.replace("{mri}", "{four.nii.gz}"), ["--moving", "3D"]),
    (REG.replace("{mri}", "{vector.nrrd}"), ["--moving", "components"]),
    (REG.replace("{trus}", "{nan.nii.gz}"), ["--fixed", "NaN"]),
    (REG.replace("{mri}", "{inf.nrrd}"), ["--moving", "Inf"]),
    (REG.replace("{trus}", "{huge.nhdr}"), ["--fixed", "GiB"]),
    (REG + " --fixed-mask {empty.nii.gz} --moving-mask {mri_gland.nii.gz}", ["--fixed-mask", "empty"]),
    (REG + " --fixed-mask {gland.nii.gz} --moving-mask {empty.nii.gz}", ["--moving-mask", "empty"]),
    (REG + " --fixed-mask {gland.nii.gz}", ["--moving-mask"]),
    (REG + " --fixed-mask {gland.nii.gz} --moving-mask {missing}", ["--moving-mask", "no such file"]),
    (REG.replace("rigid", "elastic"), ["--method", "elastic"]),
    (REG.replace("rigid", "bspline"), ["--transform-out", ".h5"]),
    (REG + " --weights {garbage.pt}", ["--weights"]),
    # warp
    (WARP.replace("{linear.tfm}", "{garbage.tfm}"), ["--transform"]),
    (WARP.replace("{linear.tfm}", "{plane.tfm}"), ["--transform", "3D"]),
    (WARP.replace("{linear.tfm}", "{trus}"), ["--transform"]),
    (WARP.replace("{linear.tfm}", "{missing}"), ["--transform", "no such file"]),
    (WARP.replace("{mri}", "{nan.nii.gz}"), ["--moving", "NaN"]),
    (WARP.replace("{trus}", "{flat.nii.gz}"), ["--reference", "3D"]),
    (WARP.replace("{mri}", "{seg_float.nii.gz}") + " --label", ["--moving"]),
    # map-points
    (MAP.replace("{points.csv}", "{missing}"), ["points"]),
    (MAP.replace("{points.csv}", "{bad_points.csv}"), ["points"]),
    (MAP.replace("{points.csv}", "{bad.mrk.json}"), ["points", "XYZ"]),
    (MAP.replace("{linear.tfm}", "{garbage.tfm}"), ["--transform"]),
    (MAP.replace("p.csv", "p.txt"), ["p.txt", ".mrk.json"]),
    # segment
    (SEG.replace("{trus}", "{missing}"), ["--trus", "no such file"]),
    (SEG.replace("{trus}", "{four.nii.gz}"), ["--trus", "3D"]),
    (SEG + " --weights {garbage.pt}", ["weights", "trus-unet"]),
    (SEG + " --weights {foreign.pt}", ["weights", "trus-unet"]),
    (SEG + " --weights {missing}", ["weights", "not found"]),
    (SEG.replace("--device cpu", "--device cuda") if not torch.cuda.is_available() else SEG + " --model nope",
     ["cuda"] if not torch.cuda.is_available() else ["--model"]),
    (SEG + " --model csad-xyz", ["--model"]),
    ("segment --out {out}/s.seg.nrrd", ["--trus"]),
    # evaluate
    (EVR.replace("{mri_labels}", "{two_channels.nii.gz}"), ["channels"]),
    (EVR.replace("{trus_labels}", "{empty.nii.gz}"), ["--fixed-label", "empty"]),
    (EVR + " --transform {garbage.tfm}", ["--transform"]),
    (EVR.replace("{trus_labels}", "{missing}"), ["--fixed-label", "no such file"]),
    (EVS.replace("{tumour}", "{missing}", 1), ["--pred", "no such file"]),
    (EVS.replace("{tumour}", "{seg_float.nii.gz}", 1), ["--pred"]),
    # train
    ("train {unknown_key.yaml}", ["batchsize"]),
    ("train {wrong_type.yaml}", ["iterations"]),
    ("train {broken.yaml}", ["yaml"]),
    ("train {missing}", ["not"]),
    # demo
    (DEMO.replace("{trus}", "{nan.nii.gz}"), ["--fixed", "NaN"]),
    ("demo --out {out}/demo --fixed {trus}", ["--moving"]),
    (DEMO + " --fixed-label {trus_labels}", ["--moving-label"]),
    (DEMO + " --fixed-label {trus_labels} --moving-label {two_channels.nii.gz}", ["channels"]),
]


@pytest.mark.parametrize("template,words", CASES, ids=[f"{i:02d}-{c[0].split()[0]}" for i, c in enumerate(CASES)])
def test_bad_input_gives_one_clear_line_and_no_output(files, tmp_path, capsys, template, words):
    out = tmp_path / "out"
    out.mkdir()
    values = {**files, "out": str(out)}
    argv = ["--progress", "none"] + re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], template).split()
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    assert list(out.rglob("*")) == [], "a failed command left output behind"


def test_debug_shows_the_traceback(files, tmp_path):
    with pytest.raises(Exception):
        main(["--debug", "warp", "--moving", files["missing"], "--reference", files["trus"],
              "--transform", files["linear.tfm"], "--out", str(tmp_path / "w.nii.gz")])
