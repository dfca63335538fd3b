"""CSAD (seed 004): network shapes, AMGB and SCFF formulas, loss terms against hand computations, synthetic ADC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.losses.csad import (CSADLoss, interlaced_csad, symmetric_kl_attention,
                                          weighted_bce_with_logits)
from MRITRUSFusionLib.phantom import generate_phantom
from MRITRUSFusionLib.segmentation.networks.csad import (CSADNet, SpatialCorrelatedFeatureFusion,
                                                        log_attention_map)
from MRITRUSFusionLib.segmentation.synthetic_adc import synthetic_adc

TINY_2D = dict(spatial_dims=2, channels=(4, 8, 8, 8, 16))
TINY_3D = dict(spatial_dims=3, channels=(4, 8, 8))


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def log_map(*values: float) -> torch.Tensor:
    """A ``(1, 1, 1, n)`` log attention map from probabilities."""
    return torch.tensor(values, dtype=torch.float64).log().view(1, 1, 1, -1)


@pytest.mark.parametrize("config, shape", [(TINY_2D, (2, 1, 32, 48)), (TINY_3D, (1, 1, 8, 16, 12))])
def test_output_shapes_with_and_without_adc(config, shape):
    net = CSADNet(**config).eval()
    n_layers = len(config["channels"])
    t2w, adc = torch.randn(shape), torch.randn(shape)
    with torch.no_grad():
        both, alone = net(t2w, adc), net(t2w)
    assert both["logits"].shape == alone["logits"].shape == (shape[0], 2, *shape[2:])
    assert len(both["log_attention_t2w"]) == len(both["log_attention_adc"]) == n_layers
    assert len(alone["log_attention_t2w"]) == n_layers and alone["log_attention_adc"] == []
    for log_a in both["log_attention_t2w"] + both["log_attention_adc"]:
        assert log_a.shape == (shape[0], 1, *shape[2:])
        assert torch.allclose(log_a.exp().flatten(1).sum(1), torch.ones(shape[0]), atol=1e-5)
    # the ADC changes the prediction; T2W-only substitutes the T2W features for the ADC ones
    assert not torch.allclose(both["logits"], alone["logits"])


def test_single_logit_output_and_default_size():
    net = CSADNet(spatial_dims=2, out_channels=1, channels=(4, 8)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 8, 8))["logits"].shape == (1, 1, 8, 8)
    assert sum(p.numel() for p in CSADNet(spatial_dims=2).parameters()) == 594946
    assert sum(p.numel() for p in CSADNet(spatial_dims=3).parameters()) == 1682978


def test_adc_dropout_trains_the_t2w_only_path():
    net = CSADNet(adc_dropout=1.0, **TINY_2D).train()
    t2w, adc = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32)
    dropped, alone = net(t2w, adc), net(t2w)
    assert torch.equal(dropped["logits"], alone["logits"]) and dropped["log_attention_adc"] == []
    assert len(net.eval()(t2w, adc)["log_attention_adc"]) == 5  # never dropped at inference


def test_attention_map_is_spatial_softmax_of_squared_features():
    # channels (1, 2) and (0, 1) at two pixels: S = [1, 5], A = softmax(S)
    features = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])
    expected = torch.tensor([math.e, math.e ** 5]) / (math.e + math.e ** 5)
    assert torch.allclose(log_attention_map(features, (1, 2)).exp().flatten(), expected)
    # a 1×1 map is upsampled before R: uniform over the 2×2 target
    assert torch.allclose(log_attention_map(torch.tensor([[[[3.0]]]]), (2, 2)).exp(), torch.full((1, 1, 2, 2), 0.25))


def test_scff_matches_equation_7_by_hand():
    fusion = SpatialCorrelatedFeatureFusion(spatial_dims=2, in_channels=1, fused_channels=1)
    with torch.no_grad():
        fusion.project.weight.fill_(1.0)
        fusion.project.bias.zero_()
    x, y = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 2.0]]]])
    # Z = x_i y_j = [[0, 2], [0, 0]]; Z_G rows: [1, e²]/(1 + e²) and [1/2, 1/2]
    e2 = math.e ** 2
    t2w_half = [1 / (1 + e2), e2 / (1 + e2)]  # Σ_i x_i Z_G[i, j] = Z_G[0, j]
    adc_half = [2 * e2 / (1 + e2), 1.0]  # Σ_j y_j Z_G[i, j] = 2 Z_G[i, 1]
    with torch.no_grad():
        fused = fusion(x, y)
    assert torch.allclose(fused, torch.tensor([[[t2w_half], [adc_half]]]))


def test_symmetric_kl_by_hand():
    a, b = log_map(0.5, 0.5), log_map(0.25, 0.75)
    # (0.25 ln 2 + 0.25 ln 1.5) / (2 · 2 pixels) = ln 3 / 16
    assert symmetric_kl_attention(a, b).item() == pytest.approx(math.log(3) / 16)
    assert symmetric_kl_attention(b, a).item() == pytest.approx(math.log(3) / 16)
    assert symmetric_kl_attention(a, a).item() == 0.0
    # batch mean: one identical pair and one (a, b) pair
    assert symmetric_kl_attention(torch.cat([a, a]), torch.cat([a, b])).item() == pytest.approx(math.log(3) / 32)


def test_csad_is_interlaced_across_modalities():
    a, b = log_map(0.5, 0.5), log_map(0.25, 0.75)
    # same maps at the same layer of both streams: no cost for PLC, but ILC pairs T2W_1-ADC_2 and ADC_1-T2W_2
    assert interlaced_csad([a, b], [a, b]).item() == pytest.approx(2 * math.log(3) / 16)
    # 3 layers: pairs (t1, a2), (a1, t2), (t2, a3), (a2, t3): only (a2=b, t3=a) and (t1=a, a2=b) differ
    assert interlaced_csad([a, a, a], [a, b, a]).item() == pytest.approx(2 * math.log(3) / 16)
    assert interlaced_csad([a, b, a], [b, a, b]).item() == 0.0


def test_weighted_bce_by_hand():
    logits = torch.tensor([0.0, math.log(3)]).view(1, 1, 1, 2)  # p̂ = 0.5, 0.75
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    expected = (-0.95 * math.log(0.5) - 0.05 * math.log(0.25)) / 2
    assert weighted_bce_with_logits(logits, target, 0.95).item() == pytest.approx(expected, rel=1e-6)


def test_csad_loss_is_the_documented_weighted_sum():
    logit = torch.tensor([0.0, math.log(3)]).view(1, 1, 1, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    outputs = {"logits": torch.cat([torch.zeros_like(logit), logit], dim=1),  # (background, tumour)
               "log_attention_t2w": [log_map(0.5, 0.5)] * 2, "log_attention_adc": [log_map(0.25, 0.75)] * 2}
    terms = CSADLoss(alpha=2.0)(outputs, target)
    dice = 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1)  # |X∩Y| = 0.5, |X| = 1.25, |Y| = 1, σ = 1
    wbce = (-0.95 * math.log(0.5) - 0.05 * math.log(0.25)) / 2
    csad = 2 * math.log(3) / 16
    assert terms["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert terms["wbce"].item() == pytest.approx(wbce, rel=1e-5)
    assert terms["csad"].item() == pytest.approx(csad, rel=1e-5)
    assert terms["total"].item() == pytest.approx(dice + 0.1 * wbce + 2.0 * csad, rel=1e-5)
    # one sigmoid logit gives the same loss; without ADC maps the distillation term is 0
    single = CSADLoss(alpha=2.0)({"logits": logit, "log_attention_t2w": outputs["log_attention_t2w"],
                                  "log_attention_adc": []}, target)
    assert single["dice"].item() == pytest.approx(dice, rel=1e-5) and single["csad"].item() == 0.0


def test_gradients_reach_both_streams():
    net = CSADNet(**TINY_2D)
    t2w, adc = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    target = (torch.rand(2, 1, 32, 32) > 0.8).float()
    outputs = net(t2w, adc)
    terms = CSADLoss()(outputs, target)
    terms["csad"].backward(retain_graph=True)  # distillation alone reaches both streams...
    for encoder in (net.t2w_encoder, net.adc_encoder):
        assert encoder.blocks[0].conv_0.conv.weight.grad.abs().sum() > 0
    assert net.head.weight.grad is None  # ...and not the decoder
    net.zero_grad()
    terms["total"].backward()
    for module in (net.t2w_encoder, net.adc_encoder, net.fusion, net.head):
        weights = [p for p in module.parameters() if p.dim() > 1]  # (biases before a norm get ~0)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_synthetic_adc_geometry_and_contrast():
    case = generate_phantom(seed=1, trus_size=(32, 32, 32), trus_spacing=(2.0, 2.0, 2.0), mri_size=(33, 32, 24),
                            mri_spacing=(2.0, 2.0, 2.5))
    adc = synthetic_adc(case.mri, case.mri_tumours, case.mri_labels[0], np.random.default_rng(0))
    assert adc.GetSize() == case.mri.GetSize() and adc.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(adc.GetSpacing(), case.mri.GetSpacing()) and np.allclose(adc.GetOrigin(), case.mri.GetOrigin())
    assert np.allclose(adc.GetDirection(), case.mri.GetDirection())
    values = sitk.GetArrayFromImage(adc)
    tumour = sitk.GetArrayFromImage(case.mri_tumours) > 0
    gland = (sitk.GetArrayFromImage(case.mri_labels[0]) > 0) & ~tumour
    assert tumour.any() and values.min() >= 0
    assert values[tumour].mean() < values[gland].mean() - 150
    again = synthetic_adc(case.mri, case.mri_tumours, case.mri_labels[0], np.random.default_rng(0))
    assert np.array_equal(sitk.GetArrayFromImage(again), values)
