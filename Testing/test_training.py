"""The trainer: config errors, exact resume, torchrun vs one process, checkpoints, file data sources, phases.

Everything runs on CPU on tiny grids (32³ phantoms at 2.4 mm, 16³ patches, a two-level UNet, 2-6 steps).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.phantom import generate_phantom, write_phantom_case
from MRITRUSFusionLib.segmentation import segment_trus
from MRITRUSFusionLib.training import config_from_dict, load_config, train
from MRITRUSFusionLib.training.augmentation import augment, build_augmentation
from MRITRUSFusionLib.training.case_names import first_overlap, select
from MRITRUSFusionLib.training.config import AugmentationSection
from MRITRUSFusionLib.training.file_data import list_cases
from MRITRUSFusionLib.training.state import load_for_inference

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "MRITRUSFusionLib" / "configs"
PHANTOM_GRID = {"trus_size": [32, 32, 32], "trus_spacing": [2.4, 2.4, 2.4], "mri_size": [28, 28, 20],
                "mri_spacing": [2.8, 2.8, 4.0]}
TINY_NET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def tiny(tmp_path: Path, **changes) -> dict:
    """A tiny phantom config (as a dict) writing under ``tmp_path``."""
    values = {
        "model": {"arguments": dict(TINY_NET)},
        "data": {"count": 2, "seed_start": 7, **PHANTOM_GRID},
        "patch_size": [16, 16, 16], "spacing_mm": 2.4, "iterations": 6, "batch_size": 2, "seed": 5,
        "device": "cpu", "log_every": 0, "checkpoint_every": 0, "output": str(tmp_path / "model.pt"),
    }
    values.update(changes)
    return values


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_equal_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory) -> Path:
    """Four tiny phantom cases in the DeepReg paired layout (plus tumour labels and transforms)."""
    root = tmp_path_factory.mktemp("deepreg")
    for k in range(4):
        case = generate_phantom(seed=k, trus_size=(32, 32, 32), trus_spacing=(2.4, 2.4, 2.4), mri_size=(28, 28, 20),
                                mri_spacing=(2.8, 2.8, 4.0))
        write_phantom_case(case, root, f"case{k:03d}")
    return root


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("values, message", [
    ({"augmentation": {"afine": {}}}, "unknown key 'augmentation.afine'"),
    ({"phases": [{"iterations": 2, "frozn": ["model.0"]}]}, r"unknown key 'phases\[0\].frozn'"),
    ({"data": {"source": "deepreg", "path": "x", "split": "train"}}, "unknown key 'data.split'"),
    ({"validate_every": "often"}, "key 'validate_every': Input should be a valid integer"),
    ({"grad_clip": "big"}, "key 'grad_clip'"),
    ({"amp": "maybe"}, "key 'amp'"),
    ({"optimiser": {"schedule": "linear"}}, "key 'optimiser.schedule'"),
    ({"augmentation": {"elastic": {"sigma_mm": [1, 2, 3]}}}, "key 'augmentation.elastic.sigma_mm': expected 2"),
    ({"data": {"source": "deepreg", "path": "x", "cases": ["obs070-obs089"]}},
     "key 'data.cases': 'obs070-obs089' includes held-out case\\(s\\) 'obs080-obs107'"),
    ({"data": {"source": "deepreg", "path": "x", "validation_cases": ["obs100"]}}, "key 'data.validation_cases'"),
    ({"data": {"source": "deepreg", "path": "x", "cases": ["obs000-obs010"], "validation_cases": ["obs005"]}},
     "also a training case"),
    ({"data": {"source": "muregpro", "path": "x", "split": "holdout"}}, "key 'data.split': the holdout split"),
    ({"data": {"source": "hdf5", "path": "x"}}, "key 'data.source': unknown data source 'hdf5'"),
    ({"data": {"source": "deepreg"}}, "key 'data.path': Field required"),
    ({"iterations": 5, "phases": [{"iterations": 2}, {"iterations": 2}]}, "key 'iterations': 5 differs"),
    ({"data": {"source": "deepreg", "path": "../shared/data/mrus-example", "held_out": ["obs080-obs099"]}},
     "key 'data.held_out': mrus-example's test set obs080-obs107 must stay held out \\(obs100 is not\\)"),
])
def test_config_errors_are_one_line_naming_the_key(values, message):
    started = time.perf_counter()
    with pytest.raises(InputError, match="^config: .*" + message) as error:
        config_from_dict(values)
    assert time.perf_counter() - started < 1.0
    assert "\n" not in str(error.value)


def test_missing_data_path_fails_fast_naming_the_key(tmp_path):
    config = tiny(tmp_path, data={"source": "deepreg", "path": str(tmp_path / "nowhere")})
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"^config key 'data\.path': .*nowhere: no such file or folder$"):
        train(config)
    assert time.perf_counter() - started < 1.0
    assert not (tmp_path / "model.run").exists()


def test_cli_config_errors_exit_1_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path, grad_clipping=1.0)))
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'grad_clipping'" in err[0]
    path.write_text(yaml.safe_dump(tiny(tmp_path, data={"source": "manifest", "path": str(tmp_path / "x.csv")})))
    assert main(["train", str(path)]) == 1
    assert "config key 'data.path'" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(tiny(tmp_path)))
    assert main(["train", str(path), "--resume"]) == 1
    assert "--resume: no checkpoint at" in capsys.readouterr().err


def test_cli_refuses_a_bad_config_before_importing_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: 2\nbatchsize: 4\n")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"data": {"source": "deepreg", "path": str(tmp_path / "nowhere")}}))
    script = ("import sys; from MRITRUSFusionLib.cli import main\n"
              "for path in sys.argv[1:]:\n"
              "    assert main(['train', path]) == 1\n"
              "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'imported torch'\n")
    completed = subprocess.run([sys.executable, "-c", script, str(bad), str(missing)], cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert lines == [f"error: config {bad}: unknown key 'batchsize'",
                     f"error: config key 'data.path': {tmp_path / 'nowhere'}: no such file or folder"]


def test_example_configs_are_valid():
    for name in ("trus-unet.yaml", "trus-unet-deepreg.yaml"):
        config = load_config(CONFIGS / name)
        assert config.model.name == "trus-unet"


def test_phase_iterations_add_up_and_unknown_prefixes_are_refused(tmp_path):
    config = config_from_dict({"phases": [{"iterations": 2}, {"iterations": 3}]})
    assert config.iterations == 5
    bad = tiny(tmp_path, phases=[{"iterations": 1, "frozen": ["registration"]}])
    bad.pop("iterations")
    with pytest.raises(InputError, match=r"config key 'phases\[0\]\.frozen': no parameter starts with 'registration'"):
        train(bad)


# ---------------------------------------------------------------------------------------------- training
def test_resume_is_bit_identical(tmp_path, caplog):
    augmentation = {"affine": {"probability": 0.5}, "intensity": {"probability": 0.5}, "flip_axes": [0]}
    model = {"arguments": {**TINY_NET, "dropout": 0.2}}
    whole = tiny(tmp_path / "whole", augmentation=augmentation, model=model, log_every=2)
    parts = tiny(tmp_path / "parts", augmentation=augmentation, model=model, log_every=2)
    with caplog.at_level(logging.INFO, logger="MRITRUSFusionLib.training"):
        uninterrupted = train(whole)
    assert any("samples/s" in record.getMessage() and "throughput" in record.getMessage()
               for record in caplog.records)
    last = train(parts, stop_after=3)
    assert last == tmp_path / "parts" / "model.run" / "last.pt"
    assert torch.load(last, weights_only=True)["step"] == 3
    assert not (tmp_path / "parts" / "model.pt").exists()
    resumed = train(parts, resume=True)
    assert_equal_weights(weights(uninterrupted), weights(resumed))
    # the run folders agree as well: same final training state, losses logged by step
    a = torch.load(tmp_path / "whole" / "model.run" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "parts" / "model.run" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    assert [x["step"] for x in a["history"]["losses"]] == [x["step"] for x in b["history"]["losses"]] == [2, 4, 6]
    moments = a["training_state"]["optimiser"]["state"], b["training_state"]["optimiser"]["state"]
    assert all(torch.equal(moments[0][k]["exp_avg"], moments[1][k]["exp_avg"]) for k in moments[0])


def test_resume_refuses_a_changed_config_and_corrupt_checkpoints(tmp_path):
    config = tiny(tmp_path, iterations=2)
    train(config, stop_after=1)
    changed = {**config, "optimiser": {"lr": 0.1}}
    with pytest.raises(InputError, match="config key 'optimiser.lr' differs"):
        train(changed, resume=True)
    last = tmp_path / "model.run" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        train(config, resume=True)
    last.write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        train(config, resume=True)
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_for_inference(last)


def test_checkpoint_loads_for_inference_from_the_file_alone(tmp_path):
    output = train(tiny(tmp_path, iterations=2, validation={"seeds": [7]}))
    checkpoint = torch.load(output, weights_only=True)
    assert "training_state" not in checkpoint
    assert checkpoint["model"] == "trus-unet" and checkpoint["spacing_mm"] == 2.4
    assert checkpoint["normalisation"] == "zscore-foreground" and checkpoint["library_version"]
    assert checkpoint["config"]["data"]["source"] == "phantom"
    for path in (output, tmp_path / "model.run" / "best.pt", tmp_path / "model.run" / "last.pt"):
        loaded = load_for_inference(path, device="cpu")
        assert loaded.patch_size == (16, 16, 16) and loaded.network.training is False
    case = generate_phantom(seed=1001, trus_size=(24, 24, 24), trus_spacing=(2.4, 2.4, 2.4))
    label = segment_trus(case.trus, model=load_for_inference(output, device="cpu"))
    assert label.GetSize() == case.trus.GetSize()


def test_two_phase_schedule_freezes_the_named_modules(tmp_path):
    config = tiny(tmp_path, phases=[{"name": "decoder", "iterations": 2, "frozen": ["model.0"]},
                                    {"name": "all", "iterations": 1, "lr_scale": 0.5}])
    config.pop("iterations")
    train(config, stop_after=2)
    after_first = weights(tmp_path / "model.run" / "last.pt")
    initial = {}
    torch.manual_seed(5)
    from MRITRUSFusionLib.segmentation.networks import build_trus_unet
    for key, value in build_trus_unet(**TINY_NET).state_dict().items():
        initial[key] = value
    frozen = [k for k in initial if k.startswith("model.0.")]
    assert frozen
    assert all(torch.equal(after_first[k], initial[k]) for k in frozen)
    assert any(not torch.equal(after_first[k], initial[k]) for k in initial if not k.startswith("model.0."))
    final = weights(train(config, resume=True))
    assert any(not torch.equal(final[k], initial[k]) for k in frozen)


# ----------------------------------------------------------------------------------------------- file data
def test_case_ranges_and_held_out_names():
    names = [f"obs{k:03d}" for k in range(108)]
    assert select(names, ["obs000-obs002", "obs079"]) == ["obs000", "obs001", "obs002", "obs079"]
    assert first_overlap(["obs000-obs079"], ["obs080-obs107"]) is None
    assert first_overlap(["obs070-obs080"], ["obs080-obs107"]) == ("obs070-obs080", "obs080-obs107")
    assert first_overlap(["obs107"], ["obs080-obs107"]) == ("obs107", "obs080-obs107")


def test_file_sources_select_cases_and_drop_held_out(phantom_dataset, tmp_path):
    data = config_from_dict({"data": {"source": "deepreg", "path": str(phantom_dataset), "held_out": ["case003"],
                                      "validation_cases": ["case002"]}}).data
    cases = list_cases(data)
    assert [c.name for c in cases.training] == ["case000", "case001"]
    assert [c.name for c in cases.validation] == ["case002"]
    # the same cases through a CSV manifest and a μ-RegPro layout
    rows = ["name,fixed_image,moving_image,fixed_label,moving_label"]
    for k in range(4):
        name = f"case{k:03d}"
        rows.append(",".join([name] + [str(phantom_dataset / folder / f"{name}.nii.gz") for folder in
                                       ("fixed_images", "moving_images", "fixed_labels", "moving_labels")]))
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    manifest = config_from_dict({"data": {"source": "manifest", "path": str(tmp_path / "cases.csv"),
                                          "cases": ["case000-case001"]}}).data
    assert [c.name for c in list_cases(manifest).training] == ["case000", "case001"]
    for split, names in (("train", ["case000", "case001"]), ("val", ["case002"])):
        for folder, source in (("us_images", "fixed_images"), ("mr_images", "moving_images"),
                               ("us_labels", "fixed_labels"), ("mr_labels", "moving_labels")):
            (tmp_path / "mu" / split / folder).mkdir(parents=True)
            for name in names:
                shutil.copy(phantom_dataset / source / f"{name}.nii.gz", tmp_path / "mu" / split / folder)
    mu = config_from_dict({"data": {"source": "muregpro", "path": str(tmp_path / "mu"),
                                    "validation_split": "val"}}).data
    mu_cases = list_cases(mu)
    assert [c.name for c in mu_cases.training] == ["case000", "case001"]
    assert [c.name for c in mu_cases.validation] == ["case002"]


def test_deepreg_source_trains_validates_and_logs(phantom_dataset, tmp_path):
    config = tiny(tmp_path, iterations=4, validate_every=2, checkpoint_every=2, data={
        "source": "deepreg", "path": str(phantom_dataset), "held_out": ["case003"], "cases": ["case000-case001"],
        "validation_cases": ["case002"], "crop_margin_mm": 5.0, "normalisation": "zscore"},
        augmentation={"affine": {"probability": 1.0}, "elastic": {"probability": 1.0},
                      "intensity": {"probability": 1.0}, "flip_axes": [0, 2]})
    output = train(config)
    run = tmp_path / "model.run"
    history = json.loads((run / "history.json").read_text())
    assert [v["step"] for v in history["validations"]] == [2, 4]
    assert list(history["validations"][0]["cases"]) == ["case002"]
    assert history["best"]["metric"] == "dice" and history["samples_per_s"] > 0
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["step"] == history["best"]["step"] and "training_state" in best
    assert_equal_weights(weights(output), best["state_dict"])
    assert torch.load(output, weights_only=True)["normalisation"] == "zscore"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "validation/dice"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_file_source_resume_is_bit_identical_with_loader_workers(phantom_dataset, tmp_path):
    data = {"source": "deepreg", "path": str(phantom_dataset), "cases": ["case000-case002"], "num_workers": 0}
    augmentation = {"affine": {"probability": 0.5}, "intensity": {"probability": 0.5}}
    whole = tiny(tmp_path / "whole", iterations=4, data=data, augmentation=augmentation)
    uninterrupted = train(whole)
    parts = tiny(tmp_path / "parts", iterations=4, data={**data, "num_workers": 2}, augmentation=augmentation)
    train(parts, stop_after=2)
    resumed = train(parts, resume=True)  # num_workers may change on resume: samples are seeded by index
    assert_equal_weights(weights(uninterrupted), weights(resumed))


def test_spatial_augmentation_moves_labels_and_landmarks_with_the_image():
    section = AugmentationSection.model_validate({"affine": {"probability": 1.0, "rotate_deg": 20},
                                                  "elastic": {"probability": 1.0, "magnitude_mm": [2, 4]},
                                                  "intensity": {"probability": 1.0, "noise_std": 0.0},
                                                  "flip_axes": [0, 1, 2]})
    pipeline = build_augmentation(section, 1.0)
    label = np.zeros((3, 24, 24, 24), np.uint8)
    label[0, 6:18, 5:19, 7:17] = 1  # gland
    label[1, 7:12, 7:12, 7:12] = 1  # landmark 1
    label[2, 12:17, 12:17, 10:15] = 1  # landmark 2
    image = label.astype(np.float32)  # one image channel per label channel: the same shapes, interpolated linearly
    for seed in range(3):
        out = augment(pipeline, {"image": image, "label": label}, seed)
        assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.int64
        warped_image, warped_label = out["image"].numpy(), out["label"].numpy()
        assert not np.array_equal(warped_label, label)
        for channel in range(3):
            inside = warped_label[channel] > 0
            weights_ = np.clip(warped_image[channel] - np.median(warped_image[channel]), 0, None)
            centroid_label = np.argwhere(inside).mean(0)
            centroid_image = (np.argwhere(np.ones_like(inside)) * weights_.reshape(-1, 1)).sum(0) / weights_.sum()
            assert np.linalg.norm(centroid_label - centroid_image) < 1.0, (seed, channel)


# ----------------------------------------------------------------------------------------------- torchrun
def test_torchrun_two_processes_match_one_process(tmp_path):
    # SGD: the update is linear in the gradient, so float rounding of the gradient all-reduce stays ~1e-7.
    # (Adam divides by sqrt(v): on gradients that are rounding noise -- the conv biases before instance norm --
    # it turns 1e-9 differences into lr-sized steps, whatever the parallelism.)
    config = tiny(tmp_path, iterations=3, batch_size=4, checkpoint_every=0,
                  optimiser={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MRITRUS_FUSION_PROGRESS": "none"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "MRITRUSFusionLib", "train", str(path), "--out", str(tmp_path / "ddp.pt")]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("checkpoint written to") == 1  # rank 0 only
    single = train(config, out=tmp_path / "single.pt")
    a, b = weights(tmp_path / "ddp.pt"), weights(single)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
