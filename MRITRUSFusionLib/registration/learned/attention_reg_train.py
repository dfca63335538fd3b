"""Train Attention-Reg (seed 002) on the authors' sample: random rigid perturbations around the ground
truth, MSE on the 6 parameters, model selection on the validation cases by SRE after the iterative
refinement. Deterministic for a given ``seed`` (CPU); a small self-contained loop.

    python -m MRITRUSFusionLib.registration.learned.attention_reg_train MRITRUSFusionLib/configs/attention-reg.yaml

Config keys (YAML, all optional; defaults in :data:`DEFAULTS`): ``seed``, ``sample_root``,
``train_cases``, ``val_cases`` (test cases 0, 9 are refused), ``phantom_seeds`` (extra rigid phantom
sources), ``patch_size`` (i, j, k), ``patch_spacing_mm``, ``network`` (``AttentionReg`` arguments),
``batch_size``, ``learning_rate``, ``iterations``, ``schedule_iterations`` (length of the cosine
learning-rate schedule, default ``iterations``), ``time_limit_s`` (a wall-clock stop: runs that hit it
depend on the machine's speed; set ``iterations`` to the logged count to reproduce one exactly),
``validate_every``, ``max_sre_mm``
(perturbations rescaled to an SRE uniform in [0, max]), ``max_translation_mm``/``max_rotation_deg`` (paper
ranges before rescaling), ``centre_jitter_mm``, ``val_perturbations`` (fixed per val case),
``stages`` (refinement rounds at validation), ``previous_stages`` (a checkpoint whose stage networks run
before the one trained here: the paper's second stage, trained on a smaller SRE range and initialised
from the previous stage; the output then holds every stage), ``output``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
import yaml

from ... import progress
from ...errors import InputError
from ...metrics.registration import surface_registration_error
from ...segmentation.checkpoints import make_checkpoint, save_checkpoint
from .attention_reg import AttentionReg
from .attention_reg_data import (DEFAULT_PATCH_SIZE, DEFAULT_PATCH_SPACING_MM, NORMALISATION, SAMPLE_SPLITS,
                                 make_batch, perturbed_start, phantom_sources, proxy_gland_mask,
                                 proxy_surface_points, random_rigid_params, sample_sources, scale_to_sre,
                                 patch_grid)
from .attention_reg_infer import MODEL_NAME, load_attention_reg, refine


def _plain_arguments(arguments: Mapping[str, Any]) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in arguments.items()}

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "sample_root": None,
    "train_cases": list(SAMPLE_SPLITS["train"]),
    "val_cases": list(SAMPLE_SPLITS["val"]),
    "phantom_seeds": [],
    "patch_size": list(DEFAULT_PATCH_SIZE),
    "patch_spacing_mm": DEFAULT_PATCH_SPACING_MM,
    "network": {"extractor_channels": [8, 16], "regressor_channels": [32, 16, 8], "pooled_size": 4,
                "hidden_features": 64, "norm": "instance"},
    "batch_size": 8,
    "learning_rate": 1.0e-3,
    "iterations": 2000,
    "schedule_iterations": None,
    "time_limit_s": 600,
    "validate_every": 100,
    "max_sre_mm": 20.0,
    "max_translation_mm": 5.0,
    "max_rotation_deg": 6.0,
    "centre_jitter_mm": 3.0,
    "val_perturbations": 6,
    "stages": 2,
    "previous_stages": None,
    "output": "Resources/Models/attention-reg.pt",
}


def load_config(path: Optional[str]) -> dict:
    config = copy.deepcopy(DEFAULTS)
    if path:
        with open(path) as handle:
            loaded = yaml.safe_load(handle) or {}
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise InputError(f"{path}: unknown keys {sorted(unknown)}")
        for key, value in loaded.items():
            config[key] = {**config[key], **value} if isinstance(config[key], dict) else value
    forbidden = set(SAMPLE_SPLITS["test"]) & (set(config["train_cases"]) | set(config["val_cases"]))
    if forbidden:
        raise InputError(f"test cases {sorted(forbidden)} may not be used for training or validation")
    return config


def validation_set(config: Mapping[str, Any]):
    """Fixed val items ``(source, start transform, mask)``: each val case's own start plus
    ``val_perturbations`` perturbations of SRE uniform in [0, max_sre_mm] (seeded)."""
    from .attention_reg_data import load_sample_case, sample_case_images

    rng = np.random.default_rng(int(config["seed"]) + 1000)
    items = []
    for source, index in zip(sample_sources(config["val_cases"], config["sample_root"]), config["val_cases"]):
        mask = proxy_gland_mask(source.trus)
        _, _, _, own_start = sample_case_images(load_sample_case(index, config["sample_root"]))
        items.append((source, own_start, mask))
        grid = patch_grid(source.trus, source.centre_mm, config["patch_size"], config["patch_spacing_mm"])
        points = proxy_surface_points(grid)
        for _ in range(int(config["val_perturbations"])):
            params = random_rigid_params(rng, 1, config["max_translation_mm"], config["max_rotation_deg"])[0]
            params = scale_to_sre(params, float(rng.uniform(1.0, config["max_sre_mm"])), points, source.centre_mm)
            items.append((source, perturbed_start(source.true_transform, params, source.centre_mm), mask))
    return items


def validate(network: AttentionReg, items, config: Mapping[str, Any], previous=()) -> dict:
    network.eval()
    before, after = [], []
    for source, start, mask in items:
        stages = int(config["stages"]) if not previous else len(previous) + 1
        result = refine([*previous, network], source.trus, source.mri, start, source.centre_mm, config["patch_size"],
                        float(config["patch_spacing_mm"]), stages, torch.device("cpu"))
        before.append(surface_registration_error(mask, start, source.true_transform))
        after.append(surface_registration_error(mask, result, source.true_transform))
    network.train()
    return {"sre_before_mm": float(np.mean(before)), "sre_after_mm": float(np.mean(after))}


def train(config: Mapping[str, Any]) -> dict:
    seed = int(config["seed"])
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(seed)
    sources = sample_sources(config["train_cases"], config["sample_root"])
    if config["phantom_seeds"]:
        sources += phantom_sources(config["phantom_seeds"])
    val_items = validation_set(config)
    network = AttentionReg(**config["network"])
    previous, previous_states = [], []
    if config["previous_stages"]:
        previous, old = load_attention_reg(config["previous_stages"], "cpu")
        if old["arguments"] != _plain_arguments(config["network"]):
            raise InputError(f"previous_stages {config['previous_stages']}: network arguments differ from the config")
        previous_states = old.get("stage_state_dicts") or [old["state_dict"]]
        network.load_state_dict(previous_states[-1])
    optimiser = torch.optim.Adam(network.parameters(), lr=float(config["learning_rate"]))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, int(config["schedule_iterations"] or config["iterations"]))
    # Parameter scale: translations in mm and angles in degrees have similar magnitudes in the paper's
    # ranges, so plain MSE on the 6 parameters (the paper's loss) is used.
    best = {"sre_after_mm": float("inf")}
    best_state = copy.deepcopy(network.state_dict())
    history = []
    start_time = time.time()
    initial = validate(network, val_items, config, previous)
    print(json.dumps({"iteration": 0, **initial}), flush=True)
    running = []
    with progress.stage("train attention-reg", int(config["iterations"])) as bar:
        for iteration in range(1, int(config["iterations"]) + 1):
            trus, mri, target = make_batch(sources, rng, int(config["batch_size"]), config["max_translation_mm"],
                                           config["max_rotation_deg"], config["max_sre_mm"],
                                           config["centre_jitter_mm"], config["patch_size"],
                                           float(config["patch_spacing_mm"]))
            prediction = network(trus, mri)
            loss = torch.mean((prediction - target) ** 2)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            running.append(loss.item())
            bar.advance(1, f"loss {np.mean(running[-20:]):.2f}")
            out_of_time = time.time() - start_time > float(config["time_limit_s"])
            if iteration % int(config["validate_every"]) == 0 or out_of_time or iteration == int(config["iterations"]):
                metrics = validate(network, val_items, config, previous)
                record = {"iteration": iteration, "loss": float(np.mean(running[-int(config["validate_every"]):])),
                          **metrics, "elapsed_s": round(time.time() - start_time, 1)}
                history.append(record)
                print(json.dumps(record), flush=True)
                if metrics["sre_after_mm"] < best["sre_after_mm"]:
                    best = {**record}
                    best_state = copy.deepcopy(network.state_dict())
            if out_of_time:
                break
    network.load_state_dict(best_state)
    checkpoint = make_checkpoint(MODEL_NAME, config["network"], network, float(config["patch_spacing_mm"]),
                                 config["patch_size"], NORMALISATION, config=dict(config),
                                 metrics={"best": best, "initial_val": initial, "history": history},
                                 iterations=int(best.get("iteration", 0)))
    if previous_states:
        checkpoint["stage_state_dicts"] = [*previous_states, checkpoint["state_dict"]]
    output = Path(config["output"])
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint, output)
    return {"best": best, "initial_val": initial, "output": str(output)}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=None, help="YAML config (see module docstring)")
    parser.add_argument("--output", default=None, help="override the config's output path")
    parser.add_argument("--time-limit-s", type=float, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # measured: 1 thread is ~5x faster than 2 on the shared CPU
    try:
        config = load_config(args.config)
        if args.output:
            config["output"] = args.output
        if args.time_limit_s is not None:
            config["time_limit_s"] = args.time_limit_s
        summary = train(config)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
