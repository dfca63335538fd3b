"""E-CMCA + LSTM network (seed 001), its loss, and the dual intra-modal loss (seed 003) against analytic values."""

from __future__ import annotations

import math

import pytest
import torch

from MRITRUSFusionLib.errors import InputError
from MRITRUSFusionLib.losses.ecmca import ECMCALoss
from MRITRUSFusionLib.losses.intra_modal import (FIXED_MODALITY_IN_MOVING_SPACE, MOVING_MODALITY_IN_FIXED_SPACE,
                                                 DualIntraModalLoss)
from MRITRUSFusionLib.registration.learned.ecmca_lstm import ECMCALSTM, MultiScaleAggregation
from MRITRUSFusionLib.registration.learned.spatial import warp

SIZE = (32, 16, 16)  # (D, H, W)
SLICES = 4


def tiny_network(size=SIZE) -> ECMCALSTM:
    """A few-channel ECMCALSTM (same structure as the default, fast on CPU)."""
    torch.manual_seed(0)
    return ECMCALSTM(size, encoder_channels=(4, 4, 4, 4), decoder_channels=(4, 4, 4, 4), refine_channels=(4,),
                     lstm_slices=SLICES, lstm_grid=(4, 4), lstm_hidden=8, lstm_layers=2, mask_hidden=8)


def pair(batch: int = 2, size=SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, *size, generator=generator), torch.randn(batch, 1, *size, generator=generator)


def index_grid(size) -> torch.Tensor:
    """``(3, D, H, W)`` voxel indices (d, h, w) of every voxel."""
    return torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in size], indexing="ij"))


def box(size, lo, hi) -> torch.Tensor:
    """A ``(D, H, W)`` {0, 1} volume, 1 on ``[lo, hi)`` along every axis."""
    volume = torch.zeros(size)
    volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1.0
    return volume


# ------------------------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------------------------

def test_output_shapes_and_identity_initialisation():
    network = tiny_network()
    fixed, moving = pair()
    with torch.no_grad():
        out = network(fixed, moving)
    assert set(out) == {"ddf", "velocity", "task_mask"}
    assert out["ddf"].shape == (2, 3, *SIZE) and out["velocity"].shape == (2, 3, *SIZE)
    assert out["task_mask"].shape == (2, 1, *SIZE)
    assert torch.count_nonzero(out["velocity"]) == 0 and torch.count_nonzero(out["ddf"]) == 0
    torch.testing.assert_close(warp(moving, out["ddf"]), moving, atol=1e-4, rtol=0)  # grid_sample rounding


def test_task_mask_is_a_weight_constant_over_each_pseudo_temporal_slice():
    mask = tiny_network()(*pair())["task_mask"]
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    slab = torch.arange(SIZE[0]) * SLICES // SIZE[0]  # depth d lies in slab floor(d·T/D)
    for t in range(SLICES):
        values = mask[:, :, slab == t]
        torch.testing.assert_close(values, values[:, :, :1].expand_as(values))


def test_task_mask_is_the_softmax_of_the_two_branches():
    """Registration branch = slab mean of channel 0 (through ReLU), smoothing branch = 0: m = sigmoid(mean)."""
    subnet = tiny_network().task_mask
    with torch.no_grad():
        for index, branch in enumerate(subnet.branches):
            for layer in (branch[0], branch[2]):
                layer.weight.zero_()
                layer.bias.zero_()
            if index == 0:
                branch[0].weight[0, 0] = 1.0
                branch[2].weight[0, 0] = 1.0
        features = torch.zeros(1, 4, *SIZE)
        features[:, 0] = 0.1 * index_grid(SIZE)[0]  # 0.1·d: slab t (depths 8t..8t+7) averages 0.8t + 0.35
        mask = subnet(features)
    expected = torch.sigmoid(0.8 * (torch.arange(SIZE[0]) // 8) + 0.35)
    torch.testing.assert_close(mask[0, 0], expected.view(-1, 1, 1).expand(SIZE))


def test_constant_velocity_integrates_to_that_translation():
    network = tiny_network()
    shift = torch.tensor([1.0, -0.5, 2.0])  # voxels along D, H, W
    with torch.no_grad():
        network.velocity_head.bias.copy_(shift)
        fixed, _ = pair(batch=1)
        moving = index_grid(SIZE)[2][None, None]  # ramp: moving[d, h, w] = w
        out = network(fixed, moving)
    expected = shift.view(1, 3, 1, 1, 1).expand(1, 3, *SIZE)
    torch.testing.assert_close(out["velocity"], expected)
    torch.testing.assert_close(out["ddf"], expected, atol=1e-5, rtol=0)
    # pull convention: warped[d, h, w] = moving[d + 1, h - 0.5, w + 2] = w + 2 away from the borders
    warped = warp(moving, out["ddf"])[0, 0, :-1, 1:, :-2]
    torch.testing.assert_close(warped, moving[0, 0, :-1, 1:, :-2] + 2.0, atol=1e-4, rtol=0)


def test_gradients_reach_every_submodule():
    size = (16, 16, 16)
    network = tiny_network(size)
    with torch.no_grad():  # leave the identity start: the zero heads would block the gradient to earlier layers
        torch.nn.init.normal_(network.velocity_head.weight, std=0.05)
        torch.nn.init.normal_(network.lstm.to_field.weight, std=0.05)
    fixed, moving = pair(size=size)
    gland = box(size, (4, 4, 4), (12, 12, 12))
    labels = torch.stack([gland, box(size, (7, 7, 7), (9, 9, 9))])[None].repeat(2, 1, 1, 1, 1)
    batch = {"fixed_image": fixed, "moving_image": moving, "fixed_label": labels,
             "moving_label": torch.roll(labels, 2, dims=2)}
    ECMCALoss(detach_task_mask=False)(network(fixed, moving), batch)["total"].backward()
    submodules = ["velocity_head", "lstm.lstm", "lstm.to_field", "task_mask", "fuse", "decoder", "refine"]
    for level in range(4):
        submodules += [f"mri_encoder.{level}", f"trus_encoder.{level}", f"ecmca.{level}.msfa", f"ecmca.{level}.dca",
                       f"ecmca.{level}.gate"]
    for name in submodules:
        gradients = [p.grad for p in network.get_submodule(name).parameters()]
        assert gradients and all(g is not None and torch.isfinite(g).all() for g in gradients), name
        assert any(torch.count_nonzero(g) > 0 for g in gradients), name


def test_multi_scale_weights_are_softmax_of_gap_plus_gmp():
    """With the scale-k convolution a centred delta scaled by c_k, F_k = c_k·F and the weights are known."""
    msfa = MultiScaleAggregation(channels=2, kernel_sizes=(3, 5), depthwise=True)
    scales = (1.0, 2.0)
    with torch.no_grad():
        for conv, scale in zip(msfa.convs, scales):
            conv.weight.zero_()
            centre = conv.kernel_size[0] // 2
            conv.weight[:, :, centre, centre, centre] = scale
            conv.bias.zero_()
        features = torch.zeros(1, 2, 4, 4, 4)
        features[0, 0, 1, 2, 3] = 8.0  # mean over all channels and voxels 8/128, max 8
        out = msfa(features)
    score = 8.0 / 128 + 8.0
    weights = torch.softmax(torch.tensor([c * score for c in scales]), dim=0)
    torch.testing.assert_close(out, (weights[0] * scales[0] + weights[1] * scales[1]) * features)


def test_input_checks():
    with pytest.raises(ValueError, match="divisible by 16"):
        ECMCALSTM((32, 16, 24))
    network = tiny_network()
    fixed, moving = pair()
    with pytest.raises(InputError, match="moving"):
        network(fixed, moving[:, :, :16])


# ------------------------------------------------------------------------------------------------------------
# ECMCALoss
# ------------------------------------------------------------------------------------------------------------

LOSS_SIZE = (8, 8, 8)
#: A 3×3 matrix A: velocity(p) = A p (p = (d, h, w)), so ||∇v||² = Σ A² everywhere.
LINEAR = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 0.5], [3.0, 0.0, 0.0]])


def label_batch() -> dict[str, torch.Tensor]:
    """Two items, three label channels (gland, landmark 1, landmark 2), with one padding channel each.

    Item 0: glands 4×4×4 boxes overlapping by 3×4×4 voxels (Dice loss 1 - 2·48/128 = 0.25); landmark 1 the
    same voxel (loss 0); landmark 2 empty in the fixed label (padding, ignored) but not in the moving one.
    Item 1: identical glands (0); landmark 1 padding; landmark 2 disjoint single voxels (loss 1).
    Valid pairs: 0.25, 0, 0, 1 → Dice 1.25 / 4.
    """
    s = LOSS_SIZE
    point = lambda d, h, w: box(s, (d, h, w), (d + 1, h + 1, w + 1))  # noqa: E731
    empty = torch.zeros(s)
    gland = box(s, (2, 2, 2), (6, 6, 6))
    fixed_label = torch.stack([torch.stack([gland, point(4, 4, 4), empty]),
                               torch.stack([gland, empty, point(1, 1, 1)])])
    moving_label = torch.stack([torch.stack([box(s, (3, 2, 2), (7, 6, 6)), point(4, 4, 4), point(2, 2, 2)]),
                                torch.stack([gland, point(3, 3, 3), point(6, 6, 6)])])
    generator = torch.Generator().manual_seed(2)
    return {"fixed_image": torch.randn(2, 1, *s, generator=generator),
            "moving_image": torch.randn(2, 1, *s, generator=generator),
            "fixed_label": fixed_label, "moving_label": moving_label}


def linear_outputs(task_mask=None) -> dict[str, torch.Tensor]:
    velocity = torch.einsum("cj,j...->c...", LINEAR, index_grid(LOSS_SIZE))[None].repeat(2, 1, 1, 1, 1)
    outputs = {"ddf": torch.zeros(2, 3, *LOSS_SIZE), "velocity": velocity}
    if task_mask is not None:
        outputs["task_mask"] = task_mask
    return outputs


def test_ecmca_loss_terms_by_hand():
    loss = ECMCALoss(dice_weight=1.0, mi_weight=1.0, gradient_weight=0.4)
    terms = loss(linear_outputs(), label_batch())
    assert terms["dice"].item() == pytest.approx(1.25 / 4, abs=1e-5)
    assert terms["gradient"].item() == pytest.approx(float((LINEAR ** 2).sum()), rel=1e-6)  # 15.25
    assert terms["mi"].item() < 0.0  # MONAI returns -MI
    expected = terms["dice"] + terms["mi"] + 0.4 * terms["gradient"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_ecmca_mutual_information_is_measured_inside_the_fixed_gland_only():
    loss = ECMCALoss()
    batch = label_batch()
    reference = loss(linear_outputs(), batch)["mi"]
    outside = 1.0 - batch["fixed_label"][:, :1]
    changed = dict(batch, fixed_image=batch["fixed_image"] + 5.0 * outside * torch.randn_like(outside),
                   moving_image=batch["moving_image"] - 3.0 * outside)
    assert loss(linear_outputs(), changed)["mi"].item() == pytest.approx(reference.item(), abs=1e-6)
    aligned = dict(batch, moving_image=batch["fixed_image"].clone())  # identical intensities in the gland
    assert loss(linear_outputs(), aligned)["mi"].item() < reference.item() - 0.5


def test_ecmca_task_mask_splits_registration_and_smoothing():
    loss = ECMCALoss(dice_weight=1.0, mi_weight=1.0, gradient_weight=0.4)
    batch = label_batch()
    plain = loss(linear_outputs(), batch)
    registration = plain["dice"] + plain["mi"]
    ones = torch.ones(2, 1, *LOSS_SIZE)
    assert loss(linear_outputs(ones), batch)["total"].item() == pytest.approx(2 * registration.item(), rel=1e-6)
    assert loss(linear_outputs(0 * ones), batch)["total"].item() == pytest.approx(2 * 0.4 * 15.25, rel=1e-6)
    # registration weight 1 on depths 0..3 and 0 on 4..7: the interior depths 1..6 are half smoothed, and each
    # item's registration weight is its mean, 0.5
    half = ones.clone()
    half[:, :, 4:] = 0.0
    expected = registration.item() + 2 * 0.4 * 0.5 * 15.25
    assert loss(linear_outputs(half), batch)["total"].item() == pytest.approx(expected, rel=1e-6)


def test_ecmca_task_mask_gradient_can_be_detached():
    batch = label_batch()
    for detach in (False, True):
        mask = torch.full((2, 1, *LOSS_SIZE), 0.3, requires_grad=True)
        outputs = linear_outputs(mask)
        outputs["velocity"].requires_grad_(True)
        ECMCALoss(detach_task_mask=detach)(outputs, batch)["total"].backward()
        assert (mask.grad is None) == detach


def landmark_dice_along_w(label_sigmas, shift_w: float) -> tuple[float, float]:
    """Dice term, and its derivative in a uniform shift ``u_W = shift_w`` (voxels), for a 2³ landmark that sits
    6 voxels further along W in the moving label than in the fixed one (the true shift is +6)."""
    size = (16, 16, 24)
    fixed = box(size, (7, 7, 6), (9, 9, 8))[None, None]
    moving = box(size, (7, 7, 12), (9, 9, 14))[None, None]
    shift = torch.tensor(float(shift_w), requires_grad=True)
    ddf = torch.zeros(1, 3, *size)
    ddf = ddf + torch.stack([torch.zeros(()), torch.zeros(()), shift])[None, :, None, None, None]
    dice = ECMCALoss(label_sigmas=label_sigmas).label_dice(warp(moving, ddf), fixed)[0].mean()
    dice.backward()
    return dice.item(), shift.grad.item()


def test_multi_scale_label_dice_pulls_a_disjoint_landmark_towards_its_partner():
    plain, plain_slope = landmark_dice_along_w((0,), 0.0)
    assert plain == pytest.approx(1.0, abs=1e-6) and plain_slope == pytest.approx(0.0, abs=1e-6)
    values = [landmark_dice_along_w((0, 1, 2, 4), shift) for shift in (0.0, 2.0, 4.0, 6.0)]
    assert values[0][1] < 0.0  # growing the shift towards the truth lowers the loss
    assert [value for value, _ in values] == sorted((value for value, _ in values), reverse=True)
    assert landmark_dice_along_w((0, 1, 2, 4), 6.0)[0] < landmark_dice_along_w((0, 1, 2, 4), 8.0)[0]


def test_label_sigmas_must_be_non_negative():
    with pytest.raises(ValueError, match="label_sigmas"):
        ECMCALoss(label_sigmas=(0, -1))
    with pytest.raises(ValueError, match="label_sigmas"):
        ECMCALoss(label_sigmas=())


# ------------------------------------------------------------------------------------------------------------
# DualIntraModalLoss
# ------------------------------------------------------------------------------------------------------------

def test_dual_intra_modal_loss_is_zero_for_aligned_identical_images():
    fixed, moving = pair(batch=2, size=(8, 8, 8))
    batch = {"fixed_image": fixed, "moving_image": moving, MOVING_MODALITY_IN_FIXED_SPACE: moving.clone(),
             FIXED_MODALITY_IN_MOVING_SPACE: fixed.clone()}
    outputs = {"ddf": torch.zeros(2, 3, 8, 8, 8)}
    for kernel_size in (None, 3):
        terms = DualIntraModalLoss(kernel_size=kernel_size)(outputs, batch)
        for name, value in terms.items():
            assert abs(value.item()) < 1e-5, (kernel_size, name)


def test_dual_intra_modal_loss_by_hand():
    """Images vary along W only, φ along D only (images unchanged by the warp), all by hand.

    * fixed f(w) = w, paired TRUS p(w) = w² (w = 0..3): NCC = 15 / (7 √5), so L_S^US = 1 - 15 / (7 √5);
    * moving m(w) = w, paired MRI 3 - w: NCC = -1, so L_S^MR = 2;
    * φ_D(d) = -0.1 d² (d = 0..4; p + φ stays inside the grid): ∇²φ = -0.2 on the interior, so
      ||∇²φ||² = 0.04; mean of φ² over d = 0.01 · (0 + 1 + 16 + 81 + 256) / 5 = 0.708.
    """
    size = (5, 3, 4)
    d, _, w = index_grid(size)
    image = lambda values: values[None, None]  # noqa: E731
    batch = {"fixed_image": image(w), FIXED_MODALITY_IN_MOVING_SPACE: image(w ** 2),
             "moving_image": image(w), MOVING_MODALITY_IN_FIXED_SPACE: image(3.0 - w)}
    ddf = torch.stack([-0.1 * d ** 2, torch.zeros(size), torch.zeros(size)])[None]
    terms = DualIntraModalLoss()({"ddf": ddf}, batch)
    us = 1.0 - 15.0 / (7.0 * math.sqrt(5.0))
    assert terms["similarity_fixed_modality"].item() == pytest.approx(us, abs=1e-5)
    assert terms["similarity_moving_modality"].item() == pytest.approx(2.0, abs=1e-5)
    assert terms["laplacian"].item() == pytest.approx(0.04, rel=1e-5)
    assert terms["displacement"].item() == pytest.approx(0.708, rel=1e-5)
    expected = 0.5 * us + 0.5 * 2.0 + 0.5 * 0.04 + 0.01 * 0.708
    assert terms["total"].item() == pytest.approx(expected, abs=1e-5)


def test_dual_intra_modal_loss_names_missing_paired_images():
    fixed, moving = pair(batch=1, size=(4, 4, 4))
    with pytest.raises(InputError, match=FIXED_MODALITY_IN_MOVING_SPACE):
        DualIntraModalLoss()({"ddf": torch.zeros(1, 3, 4, 4, 4)},
                             {"fixed_image": fixed, "moving_image": moving, MOVING_MODALITY_IN_FIXED_SPACE: moving})
