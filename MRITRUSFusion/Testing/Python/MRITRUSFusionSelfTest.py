"""End-to-end self-test of the MRITRUSFusion module, run inside 3D Slicer (ctest, or the module's
"Reload and Test" through ``slicer.util.selfTest``).

On a phantom case with known ground truth (generated locally by ``mritrus-fusion phantom``) it runs,
through the Logic and on the CPU: registration, target mapping and TRUS tumour segmentation, then checks

- the registered transform node maps known TRUS points (tumour centres) onto the MRI points the
  ground-truth transform gives them (both nodes loaded from ITK files the same way, so the check is
  independent of Slicer's transform conventions),
- TRE and gland Dice from ``mritrus-fusion evaluate registration`` on the phantom's landmark labels,
- the MRI targets mapped onto the TRUS land on the TRUS tumour centres,
- the segmentation's Dice against the phantom's TRUS tumour.

Thresholds are in mm (distances) and unitless (Dice).
"""

import math

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from MRITRUSFusion import MRITRUSFusionLogic

#: Largest accepted distance (mm) between registered and ground-truth positions of a TRUS point.
MAX_POINT_ERROR_MM = 3.0
MAX_TRE_MM = 4.0
MIN_GLAND_DICE = 0.85
MIN_TUMOUR_DICE = 0.5


class MRITRUSFusionSelfTest(ScriptedLoadableModuleTest):
    """Phantom -> register -> map targets -> segment, with TRE and Dice thresholds."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.logic = MRITRUSFusionLogic()
        self.logic.ensureDependencies(askConfirmation=False)

    def runTest(self):
        self.setUp()
        self.test_PhantomRegistrationAndSegmentation()

    def test_PhantomRegistrationAndSegmentation(self):
        sample = self.logic.loadPhantomSample(seed=1)
        self.delayDisplay("Phantom case loaded")

        transform = self.logic.register(sample["trus"], sample["mri"], method="bspline", device="cpu",
                                        trusGland=sample["trusGland"], mriGland=sample["mriGland"])
        self.assertIsNotNone(transform)
        self._checkKnownPoints(transform, sample)
        self._checkRegistrationMetrics(transform, sample)
        self.delayDisplay("Registration checked")

        mapped = self.logic.mapTargets(sample["mriTargets"], transform)
        self._assertPointsClose(_points(mapped), _points(sample["trusTargets"]), MAX_TRE_MM, "mapped target")

        segmentation = self.logic.segment(sample["trus"], model="trus-unet", device="cpu")
        dice = self.logic.evaluateSegmentation(segmentation, sample["trusLesions"])["dice"]
        self.assertGreater(_mean(dice), MIN_TUMOUR_DICE)

        self.logic.showFusion(sample["trus"], sample["mri"], transform, opacity=0.5,
                              mriSegmentations=[sample["mriGland"], sample["mriLesions"]],
                              trusSegmentations=[sample["trusGland"], segmentation])
        self.delayDisplay("Test passed")

    def _checkKnownPoints(self, transform, sample):
        """Registered vs ground-truth TRUS -> MRI mapping of the TRUS tumour centres."""
        truth = sample["groundTruthTransform"]
        self.assertIsNotNone(truth, "the phantom has no ground-truth transform")
        trusPoints = _points(sample["trusTargets"])
        self.assertTrue(trusPoints, "the phantom has no tumour")
        registered = [transform.GetTransformFromParent().TransformPoint(point) for point in trusPoints]
        expected = [truth.GetTransformFromParent().TransformPoint(point) for point in trusPoints]
        self._assertPointsClose(registered, expected, MAX_POINT_ERROR_MM, "TRUS point mapped onto the MRI")

    def _checkRegistrationMetrics(self, transform, sample):
        metrics = self.logic.evaluateRegistration(sample["trusLabelFile"], sample["mriLabelFile"], transform)
        self.assertLess(metrics["tre_mean_mm"], MAX_TRE_MM)
        self.assertGreater(metrics["dice"], MIN_GLAND_DICE)

    def _assertPointsClose(self, actual, expected, toleranceMm, what):
        self.assertEqual(len(actual), len(expected))
        for got, want in zip(actual, expected):
            self.assertLess(math.dist(got, want), toleranceMm, f"{what}: {got} vs {want}")


def _points(markupsNode) -> list:
    """Control point positions (RAS, mm) of a markups node."""
    positions = []
    for index in range(markupsNode.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPosition(index, position)
        positions.append(position)
    return positions


def _mean(value) -> float:
    """A metric that may be a number or a list of numbers (one per label)."""
    return sum(value) / len(value) if isinstance(value, (list, tuple)) else float(value)
