"""Same inputs and seed -> identical outputs on CPU (issue 9 item 5, docs/determinism.md).

``register`` (classical B-spline, image-only: Mattes MI on randomly sampled points) runs twice, seconds apart (a
clock-seeded sampler would show), and a different sampling seed must change its result (so the sameness comes
from the seed, not from sampling nothing at random). ``segment`` runs once in this process and once in a fresh
one (hash-ordered loops or per-process state would show). Outputs must be byte-identical, except for what the
formats stamp with the time: the ``.h5`` transform (HDF5 object times) is compared parameter by parameter, to
the last bit, and the ``.seg.nrrd`` without its header comments (pynrrd writes the date there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.io import read_transform, read_volume
from MRITRUSFusionLib.phantom import generate_phantom, write_phantom_case
from MRITRUSFusionLib.registration.classical import ClassicalOptions, register_classical
from MRITRUSFusionLib.segmentation.checkpoints import make_checkpoint, save_checkpoint
from MRITRUSFusionLib.segmentation.networks import build_trus_unet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A small phantom case (DeepReg layout) with gland masks, and a tiny trus-unet checkpoint."""
    root = tmp_path_factory.mktemp("determinism")
    case = generate_phantom(seed=11, trus_size=(32, 32, 32), trus_spacing=(1.8, 1.8, 1.8),
                            mri_size=(32, 32, 24), mri_spacing=(2.0, 2.0, 3.0))
    write_phantom_case(case, root, "case")
    arguments = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    torch.manual_seed(0)
    save_checkpoint(make_checkpoint("trus-unet", arguments, build_trus_unet(**arguments), 2.4, [16, 16, 16],
                                    "zscore-foreground"), root / "unet.pt")
    return {"trus": root / "fixed_images/case.nii.gz", "mri": root / "moving_images/case.nii.gz",
            "weights": root / "unet.pt"}


def twice(arguments, out: Path, fresh_process: bool) -> tuple[Path, Path]:
    """Run ``mritrus-fusion ARGUMENTS`` (``{out}`` filled in) twice: in this process, then in this process again
    or (``fresh_process``) in a new one."""
    folders = out / "first", out / "second"
    fill = lambda folder: ["--progress", "none"] + [str(a).format(out=folder) for a in arguments]  # noqa: E731
    assert main(fill(folders[0])) == 0
    if not fresh_process:
        assert main(fill(folders[1])) == 0
        return folders
    completed = subprocess.run([sys.executable, "-m", "MRITRUSFusionLib"] + fill(folders[1]), cwd=REPO,
                               capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stderr
    return folders


def without_header_comments(data: bytes) -> bytes:
    """A NRRD file without the ``#`` comment lines of its header."""
    header, separator, body = data.partition(b"\n\n")
    return b"\n".join(line for line in header.split(b"\n") if not line.startswith(b"#")) + separator + body


def assert_same_bytes(folders: tuple[Path, Path], name: str, normalise=lambda data: data) -> None:
    a, b = (normalise((folder / name).read_bytes()) for folder in folders)
    assert a == b, f"{name} differs between runs"


def parameters(transform: sitk.Transform) -> np.ndarray:
    """Every parameter and fixed parameter of ``transform`` (and of each part of a composite), in order."""
    if transform.GetName() == "CompositeTransform":
        parts = [transform.GetNthTransform(k).Downcast() for k in range(transform.GetNumberOfTransforms())]
        return np.concatenate([parameters(part) for part in parts])
    return np.concatenate([transform.GetParameters(), transform.GetFixedParameters()])


def test_register_bspline_twice_gives_identical_outputs(inputs, tmp_path):
    folders = twice(["register", "--fixed", inputs["trus"], "--moving", inputs["mri"], "--method", "bspline",
                     "--transform-out", "{out}/T.h5", "--warped-out", "{out}/warped.nii.gz"], tmp_path, False)
    assert_same_bytes(folders, "warped.nii.gz")
    first, second = (parameters(read_transform(folder / "T.h5")) for folder in folders)
    assert first.size > 100 and np.array_equal(first, second)  # B-spline coefficients, bit for bit
    other_seed = register_classical(read_volume(inputs["trus"]), read_volume(inputs["mri"]), "bspline",
                                    options=ClassicalOptions(seed=2))
    assert not np.array_equal(parameters(other_seed), first), "the sampling seed must matter"


def test_segment_twice_gives_identical_outputs(inputs, tmp_path):
    folders = twice(["segment", "--trus", inputs["trus"], "--weights", inputs["weights"], "--device", "cpu",
                     "--out", "{out}/tumour.seg.nrrd", "--probabilities-out", "{out}/probability.nii.gz"],
                    tmp_path, True)
    assert_same_bytes(folders, "probability.nii.gz")
    assert_same_bytes(folders, "tumour.seg.nrrd", without_header_comments)
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(folders[0] / "probability.nii.gz")))
    assert probability.std() > 0, "a constant map would prove nothing"
