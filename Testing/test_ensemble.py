"""Deep ensembles of segmentation models: ``ensemble_seeds`` trains one member per seed and ships one checkpoint.

Oracles: each member equals the single run with its seed (bit for bit), the ensemble's probability equals the
mean of the single models' probabilities (run one by one through the public ``segment_trus``), an interrupted
ensemble resumes to the uninterrupted one, and torch's own softmax for the network's mean-probability output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from MRITRUSFusionLib.cli import main
from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.phantom import generate_phantom
from MRITRUSFusionLib.segmentation import segment_trus
from MRITRUSFusionLib.segmentation.checkpoints import ENSEMBLE_KEY, ensemble_checkpoint, read_checkpoint
from MRITRUSFusionLib.segmentation.models import load_model
from MRITRUSFusionLib.segmentation.networks.ensemble import MeanProbabilityEnsemble
from MRITRUSFusionLib.training import config_from_dict, train

from test_training import TINY_NET, assert_equal_weights, tiny, weights


def test_ensemble_output_is_the_log_of_the_members_mean_probability():
    torch.manual_seed(0)
    members = [torch.nn.Conv3d(1, 3, 3, padding=1) for _ in range(3)]
    x = torch.randn(2, 1, 5, 6, 7)
    mean = torch.stack([torch.softmax(member(x), dim=1) for member in members]).mean(0)
    with torch.no_grad():
        output = MeanProbabilityEnsemble(members)(x)
        torch.testing.assert_close(torch.softmax(output, dim=1), mean)
        torch.testing.assert_close(output.exp().sum(1), torch.ones(2, 5, 6, 7))
    with pytest.raises(ValueError, match="at least 2"):
        MeanProbabilityEnsemble(members[:1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An ensemble of seeds 5 and 6 (with validation) and the single runs of the same seeds."""
    root = tmp_path_factory.mktemp("ensemble")
    ensemble = train(tiny(root / "ensemble", ensemble_seeds=[5, 6], validation={"seeds": [7]}))
    singles = [train(tiny(root / f"seed{seed}", seed=seed, validation={"seeds": [7]})) for seed in (5, 6)]
    return ensemble, singles


def test_members_are_the_single_runs_of_their_seeds(trained):
    ensemble, singles = trained
    checkpoint = read_checkpoint(ensemble)
    assert_equal_weights(checkpoint["state_dict"], weights(singles[0]))
    assert len(checkpoint[ENSEMBLE_KEY]) == 1
    assert_equal_weights(checkpoint[ENSEMBLE_KEY][0], weights(singles[1]))
    assert [member["seed"] for member in checkpoint["ensemble_members"]] == [5, 6]
    assert 0.0 <= checkpoint["metrics"]["validation_mean"] <= 1.0


def test_ensemble_probability_is_the_mean_of_the_single_models(trained):
    ensemble, singles = trained
    trus = generate_phantom(seed=11, trus_size=(32, 32, 32), trus_spacing=(2.4, 2.4, 2.4)).trus
    assert isinstance(load_model("trus-unet", ensemble, "cpu").network, MeanProbabilityEnsemble)
    probability = [sitk.GetArrayFromImage(segment_trus(trus, weights=path, device="cpu", return_probability=True)[1])
                   for path in (ensemble, *singles)]
    assert np.abs(probability[1] - probability[2]).max() > 1e-3  # the members differ
    np.testing.assert_allclose(probability[0], (probability[1] + probability[2]) / 2, atol=1e-5)


def test_an_interrupted_ensemble_resumes_to_the_uninterrupted_one(trained, tmp_path):
    config = tiny(tmp_path, ensemble_seeds=[5, 6], validation={"seeds": [7]})
    stopped = train(config, stop_after=3)
    assert stopped == tmp_path / "model.run" / "seed-5" / "run" / "last.pt"
    resumed = train(config, resume=True)
    expected, got = read_checkpoint(trained[0]), read_checkpoint(resumed)
    assert_equal_weights(expected["state_dict"], got["state_dict"])
    assert_equal_weights(expected[ENSEMBLE_KEY][0], got[ENSEMBLE_KEY][0])


@pytest.mark.parametrize("seeds", [[5], [5, 5]])
def test_ensemble_seeds_must_be_two_or_more_different_seeds(tmp_path, seeds):
    with pytest.raises(InputError, match="ensemble_seeds"):
        config_from_dict(tiny(tmp_path, ensemble_seeds=seeds))


def test_only_segmentation_models_train_as_ensembles(tmp_path):
    config = tiny(tmp_path, ensemble_seeds=[1, 2], model={"name": "localnet", "arguments": {}},
                  loss={"name": "terms", "terms": [{"name": "mi", "weight": 1.0}]})
    with pytest.raises(InputError, match="segmentation models"):
        train(config)


def test_members_of_different_architectures_do_not_make_an_ensemble(trained, tmp_path):
    first = read_checkpoint(trained[1][0])
    other = {**first, "arguments": {**TINY_NET, "channels": [4, 16]}}
    with pytest.raises(InputError, match="arguments differ"):
        ensemble_checkpoint([first, other])
    with pytest.raises(InputError, match="at least 2"):
        ensemble_checkpoint([first])
    with pytest.raises(InputError, match="already an ensemble"):
        ensemble_checkpoint([read_checkpoint(trained[0]), first])
    assert Path(trained[0]).is_file()


def test_a_new_ensemble_run_does_not_replace_an_earlier_ones_members(tmp_path, capsys):
    config = tiny(tmp_path, ensemble_seeds=[5, 6])
    train(config, stop_after=1)  # member seed-5 has a last.pt, the ensemble folder no last.pt of its own
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--progress", "none", "train", str(path)]) == 1
    assert "seed-5" in capsys.readouterr().err
