"""Deep ensembles of segmentation models: one full training run per seed of ``ensemble_seeds``, each in its own
run folder ``<run_dir>/seed-S`` (checkpoint chosen by validation as usual), then one inference checkpoint holding
every member (:func:`..segmentation.checkpoints.ensemble_checkpoint`), scored on the validation cases as the
ensemble it is. An interrupted ensemble resumes with the member it stopped in; finished members are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..segmentation.checkpoints import ensemble_checkpoint, read_checkpoint
from ..segmentation.models import ensemble_network, model_spec, resolve_device
from .state import save
from .tasks import SegmentationTask, task_for

log = logging.getLogger("MRITRUSFusionLib.training")
#: Each member's inference checkpoint, inside its run folder ``<run_dir>/seed-S``.
MEMBER_CHECKPOINT = "member.pt"


def _validation_score(config, checkpoint: dict) -> Optional[dict]:
    """The ensemble's ``config.validation.metric`` on the validation cases (None without any)."""
    task = task_for(config)
    source = task.build_source(config, 0, 1)
    try:
        if not source.validation:
            return None
        spec = model_spec(config.model.name)
        device = resolve_device(config.device)
        network = ensemble_network(checkpoint, Path("ensemble"), spec).to(device)
        return task.score(network, source.validation, config.validation.metric, task.loss_function(config.loss),
                          device)
    finally:
        source.batches.close()


def train_ensemble(config, target: Path, resume, stop_after: Optional[int], device: Optional[str], train) -> Path:
    """Train every member of ``config.ensemble_seeds`` with ``train`` (the trainer's entry point), then write
    the ensemble checkpoint to ``target``; returns ``target``, or the ``last.pt`` of the member stopped by
    ``stop_after``.

    Raises:
        InputError: a model other than a segmentation network.
    """
    if not isinstance(task_for(config), SegmentationTask):
        raise InputError(f"config key 'ensemble_seeds': ensembles are for segmentation models, not "
                         f"'{config.model.name}'")
    if resume not in (None, False, True):
        raise InputError(f"--resume {resume}: an ensemble resumes from its run folder; pass --resume alone")
    run_dir = config.resolved_run_dir(target)
    members = []
    for seed in config.ensemble_seeds:
        folder = run_dir / f"seed-{seed}"
        member_target = folder / MEMBER_CHECKPOINT
        if not (resume is True and member_target.is_file()):
            member = config.model_copy(update={"seed": seed, "ensemble_seeds": [], "run_dir": folder / "run"})
            started = resume is True and (folder / "run" / "last.pt").is_file()
            log.info("ensemble member seed %d (%d of %d)", seed, len(members) + 1, len(config.ensemble_seeds))
            written = train(member, member_target, resume=True if started else None, stop_after=stop_after,
                            device=device)
            if Path(written) != member_target:  # stopped before the member's end
                return Path(written)
        members.append(read_checkpoint(member_target))
    checkpoint = ensemble_checkpoint(members)
    checkpoint["config"] = config.model_dump(mode="json")
    score = _validation_score(config.model_copy(update={"device": device or config.device}), checkpoint)
    if score is not None:
        checkpoint["metrics"] = {f"validation_{config.validation.metric}": score["cases"],
                                 "validation_mean": score["mean"]}
        log.info("ensemble of %d: validation %s %.4f", len(members), config.validation.metric, score["mean"])
    save(checkpoint, target)
    return target
