"""Real SIGKILLs (issue 9 item 4, issue 5): no output is ever lost or left half-written.

- Training: ``mritrus-fusion train`` runs as a subprocess and is SIGKILLed once it has replaced ``last.pt`` at
  least once; ``last.pt`` loads right after the kill, and ``--resume`` reaches weights bit-identical to an
  uninterrupted run of the same config (CPU, fixed seed, one thread everywhere).
- Outputs: a subprocess writing a large volume through the library's atomic writer is SIGKILLed while the
  temporary file grows; the previous file under the final name is byte-identical afterwards (for ``.mhd``, the
  header and its data file). The only leftover is hidden: the temporary ``.NAME.XXXXXXXX.part.SUFFIX`` beside
  it (``.mhd``: the scratch folder ``.NAME.XXXXXXXX/``), which dataset listings ignore.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from test_training import REPO, assert_equal_weights, tiny, weights

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.io import deepreg_paired_cases, read_volume, write_volume
from MRITRUSFusionLib.training import train

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")

#: Every process of these tests computes with one thread, so float reductions happen in the same order.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MRITRUS_FUSION_PROGRESS": "none"}
TIMEOUT_S = 120.0


@pytest.fixture
def one_thread(monkeypatch):
    """Run in-process torch on one thread (as the subprocesses do); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for key, value in ONE_THREAD.items():
        monkeypatch.setenv(key, value)
    yield
    torch.set_num_threads(threads)


def start(arguments: list, log: Path) -> subprocess.Popen:
    """``python ARGUMENTS`` in the repository with one thread; stdout and stderr go to ``log``."""
    with log.open("w") as stream:
        return subprocess.Popen([sys.executable, *arguments], cwd=REPO, env={**os.environ, **ONE_THREAD},
                                stdout=stream, stderr=subprocess.STDOUT)


def wait_for(condition, process: subprocess.Popen, log: Path, poll_s: float = 0.002) -> None:
    """Poll ``condition()`` until true; fail if the process ends first or after :data:`TIMEOUT_S`."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended (status {process.returncode}) before the kill:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"nothing happened in {TIMEOUT_S} s:\n{log.read_text()}")
        time.sleep(poll_s)


def sigkill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the process was not running any more"


def inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def replaced_twice(path: Path):
    """A condition: ``path`` has been (re)written at least twice, i.e. holds a checkpoint after the first."""
    seen = set()

    def condition() -> bool:
        seen.add(inode(path))
        return len(seen - {None}) >= 2
    return condition


# ------------------------------------------------------------------------------------------------ training
def test_sigkilled_training_resumes_to_bit_identical_weights(tmp_path, one_thread):
    iterations = 6
    changes = dict(iterations=iterations, checkpoint_every=1, log_every=1, validate_every=3,
                   validation={"seeds": [7]}, model={"arguments": {"channels": [4, 8], "strides": [2],
                                                                   "num_res_units": 0, "dropout": 0.2}},
                   augmentation={"affine": {"probability": 0.5}, "intensity": {"probability": 0.5},
                                 "flip_axes": [0]})
    config = tiny(tmp_path / "killed", **changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    output, run_dir = tmp_path / "killed" / "model.pt", tmp_path / "killed" / "model.run"

    log = tmp_path / "train.log"
    process = start(["-m", "MRITRUSFusionLib", "train", str(path)], log)
    wait_for(replaced_twice(run_dir / "last.pt"), process, log)
    sigkill(process)

    killed_at = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)  # never truncated
    assert 2 <= killed_at["step"] < iterations and "training_state" in killed_at
    assert not output.exists()
    strays = [p.name for p in run_dir.iterdir() if p.name not in ("last.pt", "best.pt", "tensorboard")]
    assert all(name.startswith((".last.pt.", ".best.pt.")) and ".part" in name for name in strays), strays

    assert main(["--progress", "none", "train", str(path), "--resume"]) == 0
    resumed = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert resumed["step"] == iterations
    uninterrupted = train(tiny(tmp_path / "whole", **changes))
    assert_equal_weights(weights(uninterrupted), weights(output))
    whole = torch.load(tmp_path / "whole" / "model.run" / "last.pt", map_location="cpu", weights_only=True)
    assert resumed["history"] == whole["history"]


# ------------------------------------------------------------------------------------------------- outputs
WRITER = """
import sys
import numpy as np
import SimpleITK as sitk
from MRITRUSFusionLib.io import write_volume

voxels = np.random.default_rng(0).random((160, 160, 160), dtype=np.float32)  # incompressible: a slow write
write_volume(sitk.GetImageFromArray(voxels), sys.argv[1], overwrite=True)
"""
FULL_SIZE = 160 ** 3 * 4


def small_volume(value: float) -> sitk.Image:
    image = sitk.GetImageFromArray(np.full((6, 7, 8), value, np.float32))
    image.SetSpacing((0.8, 0.9, 1.1))
    return image


def hidden_files(folder: Path) -> list:
    """Files in ``folder`` or below whose name, or whose top folder's name, starts with a dot."""
    return [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0].startswith(".")]


@pytest.mark.parametrize("name", ["case.nii.gz", "case.mhd"])
def test_sigkill_mid_write_leaves_the_previous_file_intact(tmp_path, name):
    root = tmp_path / "dataset"
    target = write_volume(small_volume(1.0), root / "fixed_images" / name)
    write_volume(small_volume(2.0), root / "moving_images" / name)
    folder = target.parent
    before = {path: path.read_bytes() for path in folder.iterdir()}  # .mhd: the header and its data file
    cases_before = deepreg_paired_cases(root) if name.endswith(".nii.gz") else None
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))

    log = tmp_path / "writer.log"
    process = start([str(script), str(target)], log)
    wait_for(lambda: any(p.stat().st_size > 0 for p in hidden_files(folder)), process, log)
    sigkill(process)

    assert {path: path.read_bytes() for path in folder.iterdir() if path in before} == before
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(target)), 1.0)
    leftovers = sorted(set(folder.iterdir()) - set(before))
    assert leftovers and all(p.name.startswith(f".{name}.") for p in leftovers), leftovers
    partial = hidden_files(folder)
    assert 0 < sum(p.stat().st_size for p in partial) < FULL_SIZE, "killed mid-write: the temporary is partial"
    if cases_before is not None:
        assert deepreg_paired_cases(root) == cases_before, "dataset listings must ignore the temporary file"
