"""Attention-Reg (seed 002) on the project trainer: the ``attention-reg`` task, its data section and configs.

Tiny networks and few steps (CPU): training on rigid phantoms and on the authors' sample (skipped when
``../shared/data/attention-reg-sample`` is absent), exact resume, SRE validation, multi-stage checkpoints that
:func:`load_attention_reg` reads, and config errors that name their key before any work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.registration.learned.attention_reg_data import (default_sample_root, load_sample_case,
                                                                      phantom_sources, sample_case_images)
from MRITRUSFusionLib.registration.learned.attention_reg_infer import (default_weights_path, load_attention_reg,
                                                                       register_attention_reg)
from MRITRUSFusionLib.registration.linear import linear_matrix
from MRITRUSFusionLib.training import config_from_dict, load_config, train
from MRITRUSFusionLib.training.attention_reg_task import AttentionRegBatches
from MRITRUSFusionLib.training.optim import lr_factor
from MRITRUSFusionLib.training.phases import plan_phases
from MRITRUSFusionLib.training.tasks import higher_is_better, is_better, task_for

CONFIGS = Path(__file__).resolve().parents[1] / "MRITRUSFusionLib" / "configs"
TINY_NET = {"extractor_channels": [4, 8], "regressor_channels": [8, 8, 8], "pooled_size": 2,
            "hidden_features": 16, "norm": "instance"}
HAS_SAMPLE = (default_sample_root() / "gt.txt").is_file()
needs_sample = pytest.mark.skipif(not HAS_SAMPLE, reason=f"attention-reg sample not present at {default_sample_root()}")


def tiny(tmp_path: Path, **changes) -> dict:
    """A tiny phantom-only attention-reg config (as a dict) writing under ``tmp_path``."""
    values = {
        "model": {"name": "attention-reg", "arguments": dict(TINY_NET)},
        "loss": {"name": "mse"},
        "data": {"source": "attention-reg-sample", "train_cases": [], "val_cases": [], "phantom_seeds": [3],
                 "val_perturbations": 1},
        "validation": {"metric": "sre", "seeds": [4]},
        "patch_size": [16, 16, 16], "spacing_mm": 3.0, "iterations": 3, "batch_size": 2, "seed": 2,
        "device": "cpu", "log_every": 0, "checkpoint_every": 0, "output": str(tmp_path / "model.pt"),
    }
    values.update(changes)
    return values


def on_sample(tmp_path: Path, **changes) -> dict:
    """:func:`tiny` on sample cases 1, 2 (training) and 7 (validation: its own start and one perturbation)."""
    data = {"source": "attention-reg-sample", "train_cases": [1, 2], "val_cases": [7], "val_perturbations": 1}
    return tiny(tmp_path, data=data, validation={"metric": "sre"}, **changes)


def states(path: Path) -> list[dict]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("stage_state_dicts") or [checkpoint["state_dict"]]


def assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------------ configs
def test_shipped_configs_are_the_bundled_recipe():
    stage1 = load_config(CONFIGS / "attention-reg.yaml")
    stage2 = load_config(CONFIGS / "attention-reg-stage2.yaml")
    for config in (stage1, stage2):
        assert config.model.name == "attention-reg" and config.loss.name == "mse"
        assert config.validation.metric == "sre" and config.data.source == "attention-reg-sample"
        assert config.data.train_cases == [1, 2, 3, 4, 5, 6] and config.data.val_cases == [7, 8]
    assert stage2.model.previous_stages == stage1.output
    assert (stage1.data.max_sre_mm, stage2.data.max_sre_mm) == (20.0, 8.0)
    # the bundled two-stage weights still load and match the configs' architecture and grid
    networks, checkpoint = load_attention_reg(default_weights_path())
    assert len(networks) == 2
    assert checkpoint["arguments"] == stage1.model.arguments == stage2.model.arguments
    assert checkpoint["patch_size"] == list(stage2.patch_size) and checkpoint["spacing_mm"] == stage2.spacing_mm


def test_schedule_iterations_is_the_former_cosine_schedule():
    config = load_config(CONFIGS / "attention-reg.yaml")
    factor = lr_factor(config.optimiser, plan_phases(config))
    optimiser = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    former = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, 1500)  # the former loop's schedule
    for step in range(config.iterations):
        assert factor(step) == pytest.approx(optimiser.param_groups[0]["lr"], abs=1e-9)
        optimiser.step()
        former.step()
    assert factor(config.iterations) == pytest.approx(0.5 * (1 + math.cos(math.pi * 968 / 1500)))


@pytest.mark.parametrize("change, message", [
    ({"train_cases": [0, 1]}, r"key 'data\.train_cases': test case\(s\) \[0\] of the sample are held out"),
    ({"val_cases": [9]}, r"key 'data\.val_cases': test case\(s\) \[9\]"),
    ({"val_cases": [1]}, r"key 'data\.val_cases': case\(s\) \[1\] are also training cases"),
    ({"train_cases": [12]}, r"key 'data\.train_cases': sample cases are numbered 0-9"),
    ({"max_sre": 8.0}, r"unknown key 'data\.max_sre'"),
    ({"phantom_seeds": [1000]}, r"key 'data\.phantom_seeds': seeds \[1000\] are held-out"),
    ({"train_cases": [], "phantom_seeds": []}, r"no training source"),
])
def test_bad_data_sections_are_one_line_naming_the_key(change, message):
    data = {"source": "attention-reg-sample", **change}
    with pytest.raises(InputError, match="^config: .*" + message) as error:
        config_from_dict({"model": {"name": "attention-reg"}, "data": data})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"loss": {"name": "dice_ce"}}, "config key 'loss.name': 'attention-reg' is trained with 'mse'"),
    ({"validation": {"metric": "dice", "seeds": [4]}},
     "config key 'validation.metric': 'attention-reg' is scored by 'sre'"),
    ({"data": {"source": "phantom"}}, "config key 'data.source': 'attention-reg' trains on 'attention-reg-sample'"),
    ({"augmentation": {"flip_axes": [0]}}, "config key 'augmentation'"),
    ({"validation": {"metric": "sre", "seeds": [3]}}, r"config key 'validation.seeds': phantom seeds \[3\]"),
    ({"model": {"name": "attention-reg", "arguments": {"channels": [4]}}}, "config key 'model.arguments'"),
])
def test_task_config_errors_come_before_any_work(tmp_path, change, message):
    with pytest.raises(InputError, match="^" + message):
        task_for(config_from_dict(tiny(tmp_path, **change))).build()
    assert not (tmp_path / "model.run").exists()


def test_other_models_refuse_the_attention_reg_keys(tmp_path):
    with pytest.raises(InputError, match="config key 'model.previous_stages': model 'trus-unet' has no stages"):
        train({"model": {"previous_stages": str(tmp_path / "x.pt")}, "output": str(tmp_path / "m.pt")})
    with pytest.raises(InputError, match="segmentation model 'trus-unet' takes loss 'dice_ce'"):
        train({"loss": {"name": "mse"}, "output": str(tmp_path / "m.pt")})
    assert not higher_is_better("sre") and is_better("sre", 1.0, 2.0) and not is_better("sre", 2.0, 1.0)


def test_cli_bad_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    config = on_sample(tmp_path)
    config["data"]["train_cases"] = [0, 1]
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "key 'data.train_cases': test case(s) [0]" in err[0]
    config = tiny(tmp_path, data={**tiny(tmp_path)["data"], "root": str(tmp_path / "nowhere"), "train_cases": [1]})
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 1
    assert "config key 'data.root': " in capsys.readouterr().err
    assert not (tmp_path / "model.run").exists()


# ------------------------------------------------------------------------------------------------ data
def test_batches_split_over_processes_and_resume_exactly():
    sources = phantom_sources([3])
    data = config_from_dict(tiny(Path("."))).data
    whole = AttentionRegBatches(sources, data, [16, 16, 16], 3.0, 4, seed=1)
    halves = [AttentionRegBatches(sources, data, [16, 16, 16], 3.0, 4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    batch, parts = whole.next_batch(), [half.next_batch() for half in halves]
    assert batch["trus"].shape == (4, 1, 16, 16, 16) and batch["target"].shape == (4, 6)
    for key in batch:
        assert torch.equal(batch[key], torch.cat([part[key] for part in parts]))
    state = whole.state_dict()
    expected = whole.next_batch()
    again = AttentionRegBatches(sources, data, [16, 16, 16], 3.0, 4, seed=99)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()["target"], expected["target"])


# ------------------------------------------------------------------------------------------------ training
def test_resume_is_bit_identical(tmp_path):
    whole = train(tiny(tmp_path / "whole", iterations=2))
    parts = tiny(tmp_path / "parts", iterations=2)
    assert train(parts, stop_after=1).name == "last.pt"
    resumed = train(parts, resume=True)
    assert_equal_states(states(whole)[0], states(resumed)[0])
    history = [json.loads((tmp_path / run / "model.run" / "history.json").read_text()) for run in ("whole", "parts")]
    assert history[0]["validations"] == history[1]["validations"]


@needs_sample
def test_sample_run_validates_by_sre_and_its_checkpoint_registers(tmp_path):
    output = train(on_sample(tmp_path, iterations=2, validate_every=1))
    history = json.loads((tmp_path / "model.run" / "history.json").read_text())
    values = [record["value"] for record in history["validations"]]
    assert [record["metric"] for record in history["validations"]] == ["sre", "sre"]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert set(history["validations"][0]["cases"]) == {"sample7/start", "sample7/p0"}
    assert history["best"]["value"] == min(values)  # lower is better
    networks, checkpoint = load_attention_reg(output)
    assert len(networks) == 1 and checkpoint["model"] == "attention-reg" and "training_state" not in checkpoint
    assert checkpoint["patch_size"] == [16, 16, 16] and checkpoint["normalisation"] == "nonzero-percentile-1-99"
    trus, mri, _, start = sample_case_images(load_sample_case(7))
    result = register_attention_reg(trus, mri, start, weights=output, device="cpu")
    correction = np.linalg.inv(linear_matrix(start)) @ linear_matrix(result)  # start ∘ Δ, Δ rigid
    assert isinstance(result, sitk.AffineTransform)
    assert np.allclose(correction[:3, :3] @ correction[:3, :3].T, np.eye(3), atol=1e-6)


def test_second_stage_continues_the_first_and_holds_both(tmp_path):
    first = train(tiny(tmp_path / "one", iterations=1, validation={"metric": "sre"}))
    second_config = tiny(tmp_path / "two", iterations=1, seed=3)
    second_config["model"]["previous_stages"] = str(first)
    second = train(second_config)
    stage_one, stage_two = states(second)
    assert_equal_states(stage_one, states(first)[0])
    assert any(not torch.equal(stage_one[k], stage_two[k]) for k in stage_one)  # trained on from stage 1
    networks, _ = load_attention_reg(second)
    assert len(networks) == 2
    case = phantom_sources([5])[0]
    result = register_attention_reg(case.trus, case.mri, weights=second, device="cpu", stages=2)
    assert np.all(np.isfinite(result.GetParameters()))
    with pytest.raises(InputError, match="config key 'data.val_stages': 1 rounds never reach"):
        task_for(config_from_dict({**second_config, "data": {**second_config["data"], "val_stages": 1}}))
    other = {**second_config, "model": {**second_config["model"], "arguments": {**TINY_NET, "hidden_features": 8}}}
    with pytest.raises(InputError, match="config key 'model.previous_stages': .* has arguments"):
        task_for(config_from_dict(other))
