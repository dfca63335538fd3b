"""Seed 000 (registration-enhanced TRUS tumour segmentation): ViT affine branch, joint U-Net and their losses.

Expected values are computed by hand (Dice and KL on a few voxels, integer-voxel translations) or by an
independent route (``grid_sample`` through ``affine_grid``), never by re-running the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.losses.dice_focal import PooledDiceFocalLoss
from MRITRUSFusionLib.losses.feature_kl import FeatureKLLoss, feature_kl
from MRITRUSFusionLib.losses.vit_affine import ViTAffineLoss
from MRITRUSFusionLib.losses.weighted_dice import WeightedDiceLoss, weighted_dice_loss
from MRITRUSFusionLib.registration.learned.spatial import warp
from MRITRUSFusionLib.registration.learned.vit_affine import ViTAffine, theta_to_ddf
from MRITRUSFusionLib.segmentation.networks.reg_enhanced import RegEnhancedUNet

SIZE = (32, 32, 16)  # (D, H, W)
TINY = dict(hidden_channels=4, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, distribution_channels=4)


def translation(tx: float, ty: float, tz: float, batch: int = 1) -> torch.Tensor:
    """``(B, 3, 4)`` affine_grid theta of a pure translation (normalised units, x = W, y = H, z = D)."""
    theta = torch.eye(3, 4).repeat(batch, 1, 1)
    theta[:, :, 3] = torch.tensor([tx, ty, tz])
    return theta


def set_theta(network: ViTAffine, theta: torch.Tensor) -> None:
    """Make the head return ``theta`` (1, 3, 4) for every input (zero last weights, bias = theta)."""
    with torch.no_grad():
        network.head[-1].bias.copy_(theta.flatten())


def masks(*rows: list) -> torch.Tensor:
    """``(B, C, 1, 1, V)`` float masks from nested lists ``[item][channel][voxel]``."""
    return torch.tensor(rows, dtype=torch.float32)[:, :, None, None, :]


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, *SIZE, generator=generator), torch.randn(2, 1, *SIZE, generator=generator)


# ---------------------------------------------------------------------------------------------------------
# ViTAffine
# ---------------------------------------------------------------------------------------------------------

def test_vit_affine_output_shapes(images):
    fixed, moving = images
    out = ViTAffine(SIZE, feature_channels=2, **TINY)(fixed, moving)
    half = (2, 2, 16, 16, 8)
    assert out["ddf"].shape == (2, 3, *SIZE)
    assert out["theta"].shape == (2, 3, 4)
    assert out["warped_moving"].shape == (2, 1, *SIZE)
    assert out["fixed_features"].shape == half and out["moving_features"].shape == half
    for key in ("fixed_log_distribution", "moving_log_distribution"):
        assert out[key].shape == (2, 16 * 16 * 8)
        torch.testing.assert_close(out[key].exp().sum(dim=1), torch.ones(2))


def test_identity_initialisation(images):
    fixed, moving = images
    network = ViTAffine(SIZE, **TINY)
    out = network(fixed, moving)
    assert torch.equal(out["theta"], torch.eye(3, 4).expand(2, 3, 4))
    assert torch.equal(out["ddf"], torch.zeros(2, 3, *SIZE))
    torch.testing.assert_close(warp(moving, out["ddf"]), moving, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["warped_moving"], moving, atol=1e-4, rtol=0)
    # the aligned MRI features are the unaligned ones: AvgPool(M) + Conv(Conv(M)), Eq. 2
    expected = F.avg_pool3d(moving, 2) + network.moving_features.convs(moving)
    torch.testing.assert_close(out["moving_features"], expected, atol=1e-4, rtol=0)


def test_translation_theta_gives_hand_computed_ddf():
    # a normalised shift t along an axis of n voxels is t * (n - 1) / 2 voxels: 2 along W, -3 along H, 1 along D
    d, h, w = 6, 5, 9
    theta = translation(2 / 4, -3 / 2, 1 / 2.5)
    ddf = theta_to_ddf(theta, (d, h, w))
    expected = torch.tensor([1.0, -3.0, 2.0]).view(1, 3, 1, 1, 1).expand(1, 3, d, h, w)
    torch.testing.assert_close(ddf, expected)
    moving = torch.arange(d * h * w, dtype=torch.float32).view(1, 1, d, h, w)
    warped = warp(moving, ddf)
    torch.testing.assert_close(warped[..., :-1, 3:, :-2], moving[..., 1:, :-3, 2:])  # out[p] = moving[p + u]
    assert torch.all(warped[..., -1, :, :] == 0)  # sampled beyond the last D slice
    reference = F.grid_sample(moving, F.affine_grid(theta, [1, 1, d, h, w], align_corners=True), align_corners=True)
    torch.testing.assert_close(warped, reference, atol=1e-4, rtol=0)


def test_general_affine_ddf_agrees_with_affine_grid():
    generator = torch.Generator().manual_seed(1)
    theta = torch.eye(3, 4) + 0.1 * torch.randn(2, 3, 4, generator=generator)
    moving = torch.randn(2, 1, 7, 8, 9, generator=generator)
    reference = F.grid_sample(moving, F.affine_grid(theta, [2, 1, 7, 8, 9], align_corners=True), align_corners=True)
    torch.testing.assert_close(warp(moving, theta_to_ddf(theta, (7, 8, 9))), reference, atol=1e-4, rtol=0)


def test_network_translation_moves_image_and_features_consistently(images):
    fixed, moving = images
    network = ViTAffine(SIZE, **TINY)
    identity = network(fixed, moving)["moving_features"]
    # 2 voxels along W on the full grid (W = 16: (16 - 1) / 2 voxels per normalised unit) = 1 half-grid voxel
    set_theta(network, translation(2 / 7.5, 0.0, 0.0))
    out = network(fixed, moving)
    torch.testing.assert_close(out["ddf"][:, 2], torch.full((2, *SIZE), 2.0))
    torch.testing.assert_close(out["ddf"][:, :2], torch.zeros(2, 2, *SIZE), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["warped_moving"][..., :-2], moving[..., 2:], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["moving_features"][..., :-1], identity[..., 1:], atol=1e-4, rtol=0)


def test_vit_affine_rejects_bad_sizes(images):
    with pytest.raises(ValueError):
        ViTAffine((32, 32, 24))
    with pytest.raises(InputError):
        ViTAffine(SIZE, **TINY)(images[0], images[1][..., :8])


def test_default_models_stay_small():
    assert sum(p.numel() for p in ViTAffine((64, 64, 64)).parameters()) < 2_000_000
    assert sum(p.numel() for p in RegEnhancedUNet((64, 64, 64)).parameters()) < 2_000_000


# ---------------------------------------------------------------------------------------------------------
# Weighted Dice (Eq. 9), KL (Eq. 10), registration loss
# ---------------------------------------------------------------------------------------------------------

def test_weighted_dice_gland_only_by_hand():
    # fixed gland [1 1 0 0], moving [0 1 1 1]: other overlap 0, volume 2 + 1; prostate overlap 1, volume 2 + 3
    value = weighted_dice_loss(masks([[0, 1, 1, 1]]), masks([[1, 1, 0, 0]]), class_weights=(1.0, 3.0, 5.0), epsilon=0.0)
    torch.testing.assert_close(value, torch.tensor(1 - 2 * (1 * 0 + 3 * 1) / (1 * 3 + 3 * 5)))


def test_weighted_dice_with_tumour_by_hand():
    # fixed: gland [1 1 1 0], tumour [0 1 0 0]; moving: same gland, tumour [0 0 1 0]
    # other: overlap 1, volume 2; prostate [1 0 1 0] vs [1 1 0 0]: 1, 4; tumour: 0, 2 (weight 2)
    value = weighted_dice_loss(masks([[1, 1, 1, 0]]), masks([[1, 1, 1, 0]]), masks([[0, 0, 1, 0]]),
                               masks([[0, 1, 0, 0]]), class_weights=(1.0, 1.0, 2.0), epsilon=1e-5)
    torch.testing.assert_close(value, torch.tensor(1 - (2 * (1 + 1 + 0) + 1e-5) / (2 + 4 + 2 * 2 + 1e-5)))


def test_weighted_dice_ignores_padding_channels_per_item():
    moving = masks([[1, 1, 0, 0], [0, 1, 0, 0]], [[0, 1, 1, 1], [1, 0, 0, 0]])
    fixed = masks([[1, 1, 0, 0], [1, 0, 0, 0]], [[1, 1, 0, 0], [0, 0, 0, 0]])  # item 1: landmark is padding
    # item 0: other 2/4, prostate 2/4, landmark overlap 0, volume 2 (weight 2) -> 1 - 8/12
    # item 1: gland only as in the gland-only test with unit weights -> 1 - 2/8
    value = weighted_dice_loss(moving, fixed, class_weights=(1.0, 1.0, 2.0), landmark_weight=2.0, epsilon=0.0)
    torch.testing.assert_close(value, torch.tensor(((1 - 8 / 12) + (1 - 2 / 8)) / 2))


def test_weighted_dice_empty_fixed_tumour_falls_back_to_gland_only():
    gland_moving, gland_fixed = masks([[0, 1, 1, 1]]), masks([[1, 1, 0, 0]])
    with_empty_tumour = weighted_dice_loss(gland_moving, gland_fixed, masks([[0, 1, 0, 0]]), masks([[0, 0, 0, 0]]),
                                           epsilon=0.0)
    torch.testing.assert_close(with_empty_tumour, torch.tensor(1 - 2 * 1 / (3 + 5)))
    with pytest.raises(InputError):
        weighted_dice_loss(gland_moving, gland_fixed, masks([[0, 1, 0, 0]]), None)


def test_feature_kl_by_hand():
    fixed = torch.tensor([[0.5, 0.5], [0.2, 0.8]]).log()
    moving = torch.tensor([[0.25, 0.75], [0.2, 0.8]]).log()
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + 0.0) / 2
    torch.testing.assert_close(feature_kl(fixed, moving), torch.tensor(expected))
    term = FeatureKLLoss()({"fixed_log_distribution": fixed, "moving_log_distribution": moving}, {})
    torch.testing.assert_close(term["total"], torch.tensor(expected))


def test_vit_affine_loss_warps_labels_and_weights_terms():
    # gland slabs along W (D = H = 2): fixed at w = 2..4, moving at w = 3..5; a +1 voxel DDF along W aligns them
    fixed_label = torch.zeros(1, 1, 2, 2, 8)
    fixed_label[..., 2:5] = 1
    moving_label = torch.roll(fixed_label, 1, dims=-1)
    distributions = {"fixed_log_distribution": torch.tensor([[0.5, 0.5]]).log(),
                     "moving_log_distribution": torch.tensor([[0.25, 0.75]]).log()}
    batch = {"fixed_label": fixed_label, "moving_label": moving_label}
    loss = ViTAffineLoss(dice_weight=2.0, kl_weight=0.5, class_weights=(1.0, 1.0, 2.0))
    kl = 0.5 * math.log(4 / 3)
    shift = torch.zeros(1, 3, 2, 2, 8)
    shift[:, 2] = 1.0
    aligned = loss({"ddf": shift, **distributions}, batch)
    torch.testing.assert_close(aligned["weighted_dice"], torch.tensor(0.0), atol=1e-6, rtol=0)
    unaligned = loss({"ddf": torch.zeros_like(shift), **distributions}, batch)
    # other overlap 4 slabs, volume 5 + 5; prostate overlap 2, volume 3 + 3 -> 1 - 2 * 6 / 16
    torch.testing.assert_close(unaligned["weighted_dice"], torch.tensor(0.25), atol=1e-6, rtol=0)
    torch.testing.assert_close(unaligned["feature_kl"], torch.tensor(kl))
    torch.testing.assert_close(unaligned["total"], torch.tensor(2.0 * 0.25 + 0.5 * kl), atol=1e-6, rtol=0)
    term = WeightedDiceLoss(class_weights=(1.0, 1.0, 2.0))({"ddf": shift}, batch)
    torch.testing.assert_close(term["total"], term["weighted_dice"])
    torch.testing.assert_close(term["total"], torch.tensor(0.0), atol=1e-6, rtol=0)


def test_pooled_dice_focal_by_hand():
    # two voxels, both tumour; softmax probabilities of the tumour class 0.75 and 0.25
    logits = torch.tensor([[0.0, math.log(3)], [math.log(3), 0.0]]).T.reshape(1, 2, 1, 1, 2)
    target = torch.ones(1, 1, 1, 1, 2)
    dice = 1 - 2 * (0.75 + 0.25) / (2 + 2)  # classes pooled: Σ Y = 2 (probabilities), Σ G = 2
    focal = -(0.25 ** 2 * math.log(0.75) + 0.75 ** 2 * math.log(0.25)) / 2
    value = PooledDiceFocalLoss(gamma=2.0, alpha=0.5, smooth=0.0)(logits, target)
    torch.testing.assert_close(value, torch.tensor(dice + 0.5 * focal))


# ---------------------------------------------------------------------------------------------------------
# RegEnhancedUNet
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def joint() -> RegEnhancedUNet:
    torch.manual_seed(0)
    return RegEnhancedUNet((16, 16, 16), registration_args=TINY, channels=(4, 8), strides=(2,))


def test_reg_enhanced_output_shapes(joint):
    out = joint(torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16))
    assert out["logits"].shape == (2, 2, 16, 16, 16)
    assert out["ddf"].shape == (2, 3, 16, 16, 16) and out["theta"].shape == (2, 3, 4)
    assert out["moving_features"].shape == (2, 1, 8, 8, 8)


def test_registration_parameters_live_under_prefix(joint):
    names = [name for name, _ in joint.named_parameters()]
    registration = {f"registration.{name}" for name, _ in joint.registration.named_parameters()}
    assert registration == {name for name in names if name.startswith("registration.")}
    assert all(name.startswith(("registration.", "unet.")) for name in names)


def test_gradients_reach_every_parameter_group(joint):
    # at initialisation the head's last layer is zero, which blocks gradients to the encoder until the first
    # step: emulate a trained head with small random weights
    torch.manual_seed(1)
    with torch.no_grad():
        joint.registration.head[-1].weight.normal_(std=0.01)
    trus, mri = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 16, 16, 16)
    label = torch.zeros(1, 1, 16, 16, 16)
    label[..., 4:12, 4:12, 4:12] = 1
    tumour = torch.zeros_like(label)
    tumour[..., 6:9, 6:9, 6:9] = 1
    batch = {"fixed_label": label, "moving_label": torch.roll(label, 2, -1),
             "fixed_tumour": tumour, "moving_tumour": torch.roll(tumour, 2, -1)}
    out = joint(trus, mri)
    total = PooledDiceFocalLoss()(out["logits"], tumour) + ViTAffineLoss()(out, batch)["total"]
    joint.zero_grad()
    total.backward()
    groups: dict[str, float] = {}
    for name, parameter in joint.named_parameters():
        assert parameter.grad is not None, name
        group = ".".join(name.split(".")[:2])
        groups[group] = groups.get(group, 0.0) + float(parameter.grad.abs().sum())
    assert set(groups) >= {"registration.fixed_features", "registration.moving_features", "registration.embedding",
                           "registration.blocks", "registration.norm", "registration.head",
                           "registration.distribution", "unet.model"}
    assert all(value > 0 for value in groups.values()), groups
