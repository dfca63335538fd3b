"""Attention-Reg (seed 002): shapes, Eq. 1 of the attention block, identity initialisation, gradients, masks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.registration.learned import AttentionReg, CrossModalAttention, rigid_params_to_euler


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def patches(batch: int = 2, size: int = 32):
    return torch.randn(batch, 1, size, size, size), torch.randn(batch, 1, size, size, size)


def test_output_shape():
    trus, mri = patches()
    net = AttentionReg(identity_init=False).eval()
    with torch.no_grad():
        params = net(trus, mri)
    assert params.shape == (2, 6)
    assert torch.isfinite(params).all() and params.abs().sum() > 0
    # non-cubic patches (as attention-reg-sample's 32×96×96) go through the same head
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 32, 24), torch.randn(1, 1, 16, 32, 24)).shape == (1, 6)


def test_identity_initialisation_gives_identity_transform():
    trus, mri = patches()
    net = AttentionReg(identity_init=True).eval()
    with torch.no_grad():
        params = net(trus, mri)
    assert torch.equal(params, torch.zeros(2, 6))
    centre = (10.0, -20.0, 35.0)
    transform = rigid_params_to_euler(params[0], centre)
    for point in ([0.0, 0.0, 0.0], [12.5, -3.0, 40.0]):
        assert transform.TransformPoint(point) == pytest.approx(point, abs=1e-12)
    assert np.allclose(np.array(transform.GetMatrix()), np.eye(3).ravel())


def test_attention_block_shape_and_equation_1():
    block = CrossModalAttention(in_channels=6, embed_channels=3)
    primary, cross = torch.randn(2, 6, 4, 5, 3), torch.randn(2, 6, 4, 5, 3)
    out = block(primary, cross)
    assert out.shape == primary.shape
    # Eq. 1 written out: y_i = sum_j exp(θ(c_i)·φ(p_j)) g(p_j) / sum_j exp(θ(c_i)·φ(p_j)); Z = Y + P
    theta = block.theta(cross).flatten(2)  # (B, E, N)
    phi = block.phi(primary).flatten(2)
    g = block.g(primary).flatten(2)  # (B, F, N)
    weights = torch.softmax(torch.einsum("bei,bej->bij", theta, phi), dim=-1)
    y = torch.einsum("bij,bfj->bfi", weights, g).reshape(primary.shape)
    torch.testing.assert_close(out, y + primary, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="same shape"):
        block(primary, cross[..., :2])


def test_gradients_flow_to_every_parameter():
    trus, mri = patches(batch=2, size=16)
    target = torch.randn(2, 6)
    net = AttentionReg(identity_init=False)
    loss = torch.nn.functional.mse_loss(net(trus, mri), target)
    loss.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    # identity-initialised: the zeroed last layer still learns, and one step moves the output off zero
    net = AttentionReg(identity_init=True)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(net(trus, mri), target).backward()
    assert net.head[-1].weight.grad.abs().sum() > 0 and net.head[-1].bias.grad.abs().sum() > 0
    optimiser.step()
    assert net(trus, mri).abs().sum() > 0


def test_mask_channels_and_feature_reg_variant():
    trus, mri = patches(batch=1, size=16)
    masks = (trus > 0).float(), (mri > 0).float()
    net = AttentionReg(use_masks=True, identity_init=False, norm="instance").eval()
    assert net.trus_features[0].conv.in_channels == 2
    with torch.no_grad():
        with_masks = net(trus, mri, *masks)
        assert with_masks.shape == (1, 6)
        assert not torch.allclose(with_masks, net(trus, mri, masks[0], 1 - masks[1]))
    with pytest.raises(InputError, match="mask"):
        net(trus, mri)
    with pytest.raises(InputError, match="use_masks=False"):
        AttentionReg()(trus, mri, *masks)
    ablation = AttentionReg(attention=False, identity_init=False).eval()
    assert ablation.trus_attention is None
    with torch.no_grad():
        assert ablation(trus, mri).shape == (1, 6)
    assert sum(p.numel() for p in ablation.parameters()) < sum(p.numel() for p in AttentionReg().parameters())


def test_bad_patch_sizes_are_clear_errors():
    net = AttentionReg()
    with pytest.raises(InputError, match="multiple of 4"):
        net(torch.zeros(1, 1, 18, 16, 16), torch.zeros(1, 1, 18, 16, 16))
    with pytest.raises(InputError, match="same shape"):
        net(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 32, 16, 16))


def test_small_by_default():
    assert sum(p.numel() for p in AttentionReg().parameters()) < 200_000
    assert isinstance(rigid_params_to_euler(torch.zeros(6), (0.0, 0.0, 0.0)), sitk.Euler3DTransform)
