"""Bad input, every command: one ``error:`` line naming the input and the problem, exit code 1, no traceback,
and nothing written. Table-driven: each row is (command line with placeholders, words the error must hold).

Issue 9 item 3 lists the kinds of bad input; every command meets those that apply to it: missing or unreadable
files (garbage bytes, a folder without DICOM series), wrong dimensionality (2D, 4D where 3D is expected, vector
voxels), mismatched label channels, empty masks, NaN/Inf voxels or coordinates, zero spacing, absurd sizes
(refused from the header or the memory estimate, before any allocation), corrupt or incompatible checkpoints,
a transform of the wrong kind (2D, not a transform, unknown type), CUDA requested but absent, and outputs
that cannot be written. CUDA out of memory is in test_devices.py (it needs a patched network), the Slicer
module's library side (``slicer_bridge``) at the end of this file.
"""

import json
import re
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.phantom import generate_phantom, write_phantom_case
from MRITRUSFusionLib.registration.learned.attention_reg_infer import default_weights_path
from MRITRUSFusionLib.segmentation.checkpoints import make_checkpoint
from MRITRUSFusionLib.segmentation.networks import build_trus_unet
from MRITRUSFusionLib.slicer_bridge.runner import CLIError, CLIRunner

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()
TINY_UNET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


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
    _more_files(root, paths)
    return {key: str(value) for key, value in paths.items()}


def _more_files(root, paths):
    """Zero spacing, NaN points, a folder without DICOM, checkpoints of the wrong kind, a tiny training config."""
    paths["zero.nrrd"] = root / "zero.nrrd"
    nrrd.write(str(paths["zero.nrrd"]), np.zeros((8, 9, 10), np.float32),
               {"space": "left-posterior-superior", "space directions": np.diag([1.0, 0.0, 1.0]),
                "space origin": np.zeros(3), "kinds": ["domain"] * 3})
    paths["nan_points.csv"] = root / "nan_points.csv"
    paths["nan_points.csv"].write_text("label,x,y,z\nt1,nan,20,30\n")
    paths["no_dicom"] = root / "no_dicom"
    paths["no_dicom"].mkdir()
    paths["labels"] = root / "fixed_tumour_labels"
    unet = build_trus_unet(**TINY_UNET)
    paths["unet.pt"] = root / "unet.pt"  # a complete trus-unet checkpoint, without training state
    torch.save(make_checkpoint("trus-unet", TINY_UNET, unet, 2.4, [16] * 3, "zscore-foreground"), paths["unet.pt"])
    paths["mismatched.pt"] = root / "mismatched.pt"  # arguments that do not build its weights
    torch.save(make_checkpoint("trus-unet", {**TINY_UNET, "channels": [8, 16]}, unet, 2.4, [16] * 3,
                               "zscore-foreground"), paths["mismatched.pt"])
    paths["attention-reg.pt"] = default_weights_path()
    paths["tiny.yaml"] = root / "tiny.yaml"
    paths["tiny.yaml"].write_text(yaml.safe_dump({
        "model": {"arguments": TINY_UNET}, "data": {"count": 1, "trus_size": [32, 32, 32]},
        "patch_size": [16, 16, 16], "spacing_mm": 2.4, "iterations": 1, "batch_size": 1, "device": "cpu",
        "output": str(root / "tiny" / "model.pt")}))


REG = "register --fixed {trus} --moving {mri} --method rigid --transform-out {out}/T.tfm"
WARP = "warp --moving {mri} --reference {trus} --transform {linear.tfm} --out {out}/w.nii.gz"
MAP = "map-points --points {points.csv} --transform {linear.tfm} --out {out}/p.csv"
SEG = "segment --trus {trus} --out {out}/s.seg.nrrd --device cpu"
EVR = "evaluate registration --fixed-label {trus_labels} --moving-label {mri_labels} --out {out}/m.json"
EVS = "evaluate segmentation --pred {tumour} --gt {tumour} --out {out}/m.json"
DEMO = "demo --out {out}/demo --fixed {trus} --moving {mri} --device cpu"
AREG = REG.replace("rigid", "attention-reg") + " --device cpu"
EVD = "evaluate detection --predictions {labels} --labels {labels} --out {out}/d"
TRAIN = "train {tiny.yaml} --out {out}/model.pt"
BENCH = "bench --out {out}/b.json --phantoms 1 --no-scaling"

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
    # -------------------------------------------------- added by the issue 9 audit: the kinds each command lacked
    # register
    (REG.replace("{trus}", "{zero.nrrd}"), ["--fixed", "zero-valued spacing"]),
    (REG.replace("{mri}", "{no_dicom}"), ["--moving", "no DICOM series"]),
    (AREG + " --weights {garbage.pt}", ["garbage.pt", "not a readable PyTorch checkpoint"]),
    (AREG + " --weights {unet.pt}", ["unet.pt", "'trus-unet' checkpoint", "expected an 'attention-reg'"]),
    (AREG + " --weights {missing}", ["weights", "not found"]),
    (AREG + " --fixed-mask {empty.nii.gz} --moving-mask {mri_gland.nii.gz}", ["--fixed-mask", "empty"]),
    *([(AREG.replace("--device cpu", "--device cuda"), ["cuda", "not available"])] if NO_CUDA else []),
    # warp
    (WARP.replace("{trus}", "{zero.nrrd}"), ["--reference", "zero-valued spacing"]),
    (WARP.replace("{trus}", "{huge.nhdr}"), ["--reference", "GiB"]),
    (WARP.replace("{mri}", "{four.nii.gz}"), ["--moving", "3D"]),
    (WARP.replace("{mri}", "{garbage.nii.gz}"), ["--moving", "cannot read"]),
    (WARP.replace("{trus}", "{inf.nrrd}"), ["--reference", "Inf"]),
    (WARP.replace("{out}/w.nii.gz", "{garbage.pt}/w.nii.gz"), ["garbage.pt is a file"]),
    # map-points
    (MAP.replace("{linear.tfm}", "{plane.tfm}"), ["--transform", "3D"]),
    (MAP.replace("{points.csv}", "{nan_points.csv}"), ["points", "NaN"]),
    (MAP.replace("{points.csv}", "{trus}"), ["points", "format"]),
    # segment
    (SEG.replace("{trus}", "{zero.nrrd}"), ["--trus", "zero-valued spacing"]),
    (SEG.replace("{trus}", "{garbage.nii.gz}"), ["--trus", "cannot read"]),
    (SEG.replace("{trus}", "{flat.nii.gz}"), ["--trus", "3D"]),
    (SEG.replace("{trus}", "{nan.nii.gz}"), ["--trus", "NaN"]),
    (SEG.replace("{trus}", "{huge.nhdr}"), ["--trus", "GiB"]),
    (SEG + " --weights {mismatched.pt}", ["mismatched.pt", "does not match", "trus-unet"]),
    (SEG + " --weights {attention-reg.pt}", ["attention-reg.pt", "is for 'attention-reg'", "trus-unet"]),
    (SEG + " --threshold 1.5", ["threshold", "between 0 and 1"]),
    # evaluate registration / segmentation / detection
    (EVR + " --transform {plane.tfm}", ["--transform", "3D"]),
    (EVR.replace("{mri_labels}", "{empty.nii.gz}"), ["--moving-label", "empty"]),
    (EVR.replace("{trus_labels}", "{huge.nhdr}"), ["--fixed-label", "GiB"]),
    (EVR.replace("{trus_labels}", "{flat.nii.gz}"), ["--fixed-label", "3D"]),
    (EVR.replace("{trus_labels}", "{zero.nrrd}"), ["--fixed-label", "zero-valued spacing"]),
    (EVS.replace("{tumour} --out", "{four.nii.gz} --out"), ["--gt", "3D"]),
    (EVS.replace("{tumour} --out", "{missing} --out"), ["--gt", "no such file"]),
    (EVS.replace("{out}/m.json", "{out}") + " --overwrite", ["is a folder"]),
    (EVD.replace("--predictions {labels}", "--predictions {missing}"), ["--predictions", "no such folder"]),
    (EVD.replace("--labels {labels}", "--labels {missing}"), ["--labels", "no such folder"]),
    (EVD.replace("--predictions {labels}", "--predictions {no_dicom}"), ["--predictions", "no detection map"]),
    # train
    (TRAIN + " --resume {garbage.pt}", ["garbage.pt", "not a readable PyTorch checkpoint"]),
    (TRAIN + " --resume {unet.pt}", ["unet.pt", "no training state"]),
    (TRAIN.replace("{out}/model.pt", "{garbage.pt}"), ["garbage.pt", "output exists", "--overwrite"]),
    *([(TRAIN + " --device cuda", ["cuda", "not available"])] if NO_CUDA else []),
    # demo
    (DEMO.replace("{trus}", "{four.nii.gz}"), ["--fixed", "3D"]),
    (DEMO.replace("{mri}", "{missing}"), ["--moving", "no such file"]),
    (DEMO.replace("{trus}", "{zero.nrrd}"), ["--fixed", "zero-valued spacing"]),
    (DEMO + " --weights {garbage.pt}", ["garbage.pt", "not a readable PyTorch checkpoint"]),
    *([(DEMO.replace("--device cpu", "--device cuda"), ["cuda", "not available"])] if NO_CUDA else []),
    # phantom
    ("phantom --out {out}/ph --cases 0", ["--cases 0", "at least 1"]),
    ("phantom --out {out}/ph --tumours -1", ["--tumours -1", "at least 0"]),
    ("phantom --out {garbage.pt}", ["--out", "garbage.pt: is a file"]),
    # bench
    (BENCH.replace("--phantoms 1", "--phantoms 0"), ["--phantoms 0", "at least 1"]),
    (BENCH + " --size 8", ["--size 8", "at least 32"]),
    (BENCH + " --size 100000", ["phantom", "100000×100000×100000", "GiB", "limit"]),
    (BENCH + " --dataset {missing} --cases case", ["dataset", "no such file"]),
    (BENCH + " --repeats 0", ["--repeats 0", "at least 1"]),
]


def arguments(template: str, files: dict, out) -> list:
    """The command line of ``template`` with its ``{placeholders}`` filled in."""
    values = {**files, "out": str(out)}
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], template).split()


@pytest.mark.parametrize("template,words", CASES, ids=[f"{i:02d}-{c[0].split()[0]}" for i, c in enumerate(CASES)])
def test_bad_input_gives_one_clear_line_and_no_output(files, tmp_path, capsys, template, words):
    out = tmp_path / "out"
    out.mkdir()
    code = main(["--progress", "none"] + arguments(template, files, out))
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


# ------------------------------------------------------------------------------- the Slicer module's library side
#: What the Slicer module's Logic (register, segment, mapTargets, evaluateRegistration, evaluateSegmentation)
#: can hand the CLI through ``slicer_bridge``: nodes with bad voxels or geometry, transforms of the wrong kind.
BRIDGE_CASES = [
    pytest.param(REG.replace("{trus}", "{nan.nii.gz}"), ["--fixed", "NaN"], id="register-nan"),
    pytest.param(SEG.replace("{trus}", "{four.nii.gz}"), ["--trus", "3D"], id="segment-4d"),
    pytest.param(MAP.replace("{linear.tfm}", "{plane.tfm}"), ["--transform", "3D"], id="map-points-2d-transform"),
    pytest.param(EVR.replace("{mri_labels}", "{two_channels.nii.gz}"), ["channels"], id="evaluate-channels"),
    pytest.param(EVS.replace("{tumour} --out", "{zero.nrrd} --out"), ["--gt", "zero-valued spacing"],
                 id="evaluate-zero-spacing"),
]


@pytest.mark.parametrize("template,words", BRIDGE_CASES)
def test_slicer_bridge_raises_the_cli_line(files, tmp_path, template, words):
    """``CLIRunner.check`` (what every Logic method calls) raises :class:`CLIError` with the CLI's one line."""
    out = tmp_path / "out"
    out.mkdir()
    runner = CLIRunner.for_cli(arguments(template, files, out), env={"PYTHONPATH": str(REPO)}).start()
    with pytest.raises(CLIError) as error:
        runner.check(timeout=120)
    message = str(error.value)
    assert runner.result.returncode == 1 and runner.result.stderr_lines == (f"error: {message}",)
    for word in words:
        assert word.lower() in message.lower(), message
    assert list(out.rglob("*")) == [], "a failed command left output behind"
