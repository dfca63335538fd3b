"""3D Slicer module MRITRUSFusion: prostate MRI to 3D TRUS fusion.

A thin GUI and scripting layer over the ``mritrus-fusion`` command line of MRITRUSFusionLib. Nodes are
written to a temporary folder (their own, untransformed geometry; volumes as NRRD, i.e. LPS mm), the CLI
runs as a subprocess of Slicer's Python (``python -m MRITRUSFusionLib --progress json ...``), and its
outputs are loaded back as MRML nodes. TRUS is the fixed image and MRI the moving one: the transform maps
a TRUS point to the MRI point (ITK resampling convention), so applied to the MRI node it aligns the MRI
with the TRUS. No algorithm lives here.

Console use::

    logic = slicer.modules.mritrusfusion.widgetRepresentation().self().logic   # or MRITRUSFusionLogic()
    transformNode = logic.register(trusNode, mriNode, method="bspline", device="auto")
    segNode = logic.segment(trusNode, mriNode=mriNode, transformNode=transformNode, model="trus-unet")
    targetsOnTrus = logic.mapTargets(mriTargetsNode, transformNode)
    logic.showFusion(trusNode, mriNode, transformNode, opacity=0.5)
"""

import importlib
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Annotated, Callable, Optional, Union

import qt
import vtk

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTransformNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _libraryParentDir() -> str:
    """Folder that holds the MRITRUSFusionLib package: this module's folder in an installed extension
    (qt-scripted-modules/), the repository root in a source checkout."""
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    for candidate in (moduleDir, os.path.dirname(moduleDir)):
        if os.path.isfile(os.path.join(candidate, "MRITRUSFusionLib", "__init__.py")):
            return candidate
    raise ImportError(f"MRITRUSFusionLib was not found next to {moduleDir}")


LIBRARY_PARENT_DIR = _libraryParentDir()
if LIBRARY_PARENT_DIR not in sys.path:
    sys.path.insert(0, LIBRARY_PARENT_DIR)

# Standard library only: importable before the library's own dependencies are installed. The runner
# (which needs tqdm through MRITRUSFusionLib.progress) is imported where a run starts.
from MRITRUSFusionLib.slicer_bridge import dependencies  # noqa: E402
from MRITRUSFusionLib.slicer_bridge.exchange import TempExchange  # noqa: E402

#: ``--method`` names of ``mritrus-fusion register`` (ARCHITECTURE.md).
REGISTRATION_METHODS = ["auto", "rigid", "affine", "bspline", "attention-reg", "vit-affine", "ecmca-lstm"]
#: ``--model`` names of ``mritrus-fusion segment`` and the images each model reads.
MODEL_INPUTS = {
    "trus-unet": ("trus",),
    "concat": ("trus", "mri"),
    "reg-enhanced": ("trus", "mri"),
    "csad": ("mri",),
    "gland-trus": ("trus",),
    "gland-mri": ("mri",),
}
SEGMENTATION_MODELS = list(MODEL_INPUTS)
DEVICES = ["auto", "cpu", "cuda"]
#: Probability above which the CLI's own segmentation counts a voxel in.
DEFAULT_THRESHOLD = 0.5
SAMPLE_CATEGORY = "MRI-TRUS Fusion"
SAMPLE_NAME = "MRI-TRUS phantom"
_POLL_INTERVAL_MS = 100


#
# MRITRUSFusion
#


class MRITRUSFusion(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MRI-TRUS Fusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["MRI-TRUS Fusion contributors"]
        self.parent.helpText = _(
            "Fuse a prostate MRI (T2W, optional ADC) with a 3D transrectal ultrasound (TRUS): register the "
            "MRI to the TRUS (classical or learned methods), map MRI biopsy targets and lesion contours onto "
            "the TRUS, and segment the tumour on TRUS with models that use the registered MRI. Computations "
            "run in a separate process (the mritrus-fusion command line), so Slicer stays responsive and "
            "Cancel stops them at once.")
        self.parent.acknowledgementText = _(
            "Built on SimpleITK, PyTorch and MONAI. The synthetic phantom sample is generated locally.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the phantom case to the Sample Data module; it is generated locally, nothing is downloaded."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "MRITRUSFusion.png"),
        uris=[],
        fileNames=[],
        customDownloader=lambda source: MRITRUSFusionLogic().loadPhantomSample(),
    )


#
# MRITRUSFusionParameterNode
#


@parameterNodeWrapper
class MRITRUSFusionParameterNode:
    """State of the panel, saved with the scene. Field names are the .ui SlicerParameterName values."""

    # Inputs
    mriVolume: vtkMRMLScalarVolumeNode
    adcVolume: vtkMRMLScalarVolumeNode
    trusVolume: vtkMRMLScalarVolumeNode
    mriGland: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    trusGland: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    mriLesions: vtkMRMLSegmentationNode
    mriTargets: vtkMRMLMarkupsFiducialNode
    # Registration
    runRegistration: bool = True
    registrationMethod: Annotated[str, Choice(REGISTRATION_METHODS)] = "auto"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    useGlandMasks: bool = True
    registrationWeights: pathlib.Path
    debugMode: bool = False
    # Segmentation
    runSegmentation: bool = False
    segmentationModel: Annotated[str, Choice(SEGMENTATION_MODELS)] = "trus-unet"
    probabilityThreshold: Annotated[float, WithinRange(0.05, 0.95)] = DEFAULT_THRESHOLD
    segmentationWeights: pathlib.Path
    # Outputs (None: created on Apply)
    outputTransform: vtkMRMLTransformNode
    warpedMri: vtkMRMLScalarVolumeNode
    trusTumourSegmentation: vtkMRMLSegmentationNode
    mappedTargets: vtkMRMLMarkupsFiducialNode
    # Display
    foregroundOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showCheckerboard: bool = False
    showGlandContours: bool = True
    showLesionContours: bool = True


#
# MRITRUSFusionWidget
#


class MRITRUSFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node and runs the Logic's jobs without blocking."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the CLIJob running now
        self._storeResult = None  # what to do with the running job's result
        self._pendingSteps = []  # functions that start the next jobs of this Apply
        self._stepCount = 0
        self._pollTimer = None
        self._fusionShown = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRITRUSFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MRITRUSFusionLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(_POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._pollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSampleButton)
        self.ui.foregroundOpacitySliderWidget.connect("valueChanged(double)", self._scheduleDisplayUpdate)
        for checkBox in (self.ui.showCheckerboardCheckBox, self.ui.showGlandContoursCheckBox,
                         self.ui.showLesionContoursCheckBox):
            checkBox.connect("toggled(bool)", self._scheduleDisplayUpdate)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[MRITRUSFusionParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    # --- buttons ---------------------------------------------------------------------------------

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._job is not None
        problem = self._inputProblem()
        self.ui.applyButton.enabled = not running and problem is None
        self.ui.applyButton.toolTip = problem or _("Run the checked steps, then show the fusion.")
        self.ui.cancelButton.enabled = running
        self.ui.loadSampleButton.enabled = not running

    def _inputProblem(self) -> Optional[str]:
        """Why Apply cannot run with the current parameters, or None."""
        p = self._parameterNode
        if p is None:
            return _("No parameter node.")
        if not (p.runRegistration or p.runSegmentation or p.mriTargets):
            return _("Check registration or segmentation, or select MRI targets to map.")
        if p.runRegistration and not (p.trusVolume and p.mriVolume):
            return _("Registration needs the TRUS and the MRI.")
        if p.runSegmentation:
            needs = MODEL_INPUTS[p.segmentationModel]
            if "trus" in needs and not p.trusVolume:
                return _("The segmentation model needs the TRUS.")
            if "mri" in needs and not p.mriVolume:
                return _("The segmentation model needs the MRI.")
        return None

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start."), waitCursor=True):
            self.logic.ensureDependencies()
            self._startRun(self._plannedSteps())

    def onLoadSampleButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the phantom sample."), waitCursor=True):
            self.logic.ensureDependencies()
            if self.logic.phantomSampleAvailable():
                self._selectSample(self.logic.loadPhantomSample())
                return
            self._startRun([self._phantomStep])

    def onCancelButton(self) -> None:
        self._cancelRun()
        self.ui.statusLabel.text = _("Cancelling...")

    # --- steps: each starts a job and returns it with the function that stores its result ----------

    def _plannedSteps(self) -> list:
        p = self._parameterNode
        steps = []
        if p.runRegistration:
            steps.append(self._registrationStep)
        if p.mriTargets:
            steps.append(self._targetMappingStep)
        if p.runSegmentation:
            steps.append(self._segmentationStep)
        return steps

    def _registrationStep(self):
        p = self._parameterNode
        masks = p.useGlandMasks and p.trusGland and p.mriGland
        job = self.logic.startRegistration(
            p.trusVolume, p.mriVolume, method=p.registrationMethod, device=p.device,
            trusGland=p.trusGland if masks else None, mriGland=p.mriGland if masks else None,
            weights=_optionalPath(p.registrationWeights), transformNode=p.outputTransform,
            warpedNode=p.warpedMri, debug=p.debugMode, progressCallback=self._onProgress)

        def store(result):
            p.outputTransform, p.warpedMri = result

        return job, store

    def _targetMappingStep(self):
        p = self._parameterNode
        if not p.outputTransform:
            raise ValueError(_("Mapping targets needs a transform: run the registration first."))
        job = self.logic.startTargetMapping(p.mriTargets, p.outputTransform, outputNode=p.mappedTargets,
                                            debug=p.debugMode, progressCallback=self._onProgress)

        def store(result):
            p.mappedTargets = result

        return job, store

    def _segmentationStep(self):
        p = self._parameterNode
        job = self.logic.startSegmentation(
            trusNode=p.trusVolume, mriNode=p.mriVolume, adcNode=p.adcVolume, transformNode=p.outputTransform,
            model=p.segmentationModel, device=p.device, weights=_optionalPath(p.segmentationWeights),
            threshold=p.probabilityThreshold, segmentationNode=p.trusTumourSegmentation,
            debug=p.debugMode, progressCallback=self._onProgress)

        def store(result):
            p.trusTumourSegmentation = result

        return job, store

    def _phantomStep(self):
        return self.logic.startPhantomGeneration(progressCallback=self._onProgress), self._selectSample

    def _selectSample(self, sample: dict) -> None:
        p = self._parameterNode
        p.trusVolume, p.mriVolume = sample["trus"], sample["mri"]
        p.trusGland, p.mriGland = sample["trusGland"], sample["mriGland"]
        p.mriLesions, p.mriTargets = sample["mriLesions"], sample["mriTargets"]
        slicer.util.setSliceViewerLayers(background=sample["trus"], foreground=sample["mri"],
                                         foregroundOpacity=p.foregroundOpacity, fit=True)

    # --- running ---------------------------------------------------------------------------------

    def _startRun(self, steps: list) -> None:
        self._pendingSteps = list(steps)
        self._stepCount = len(steps)
        self.ui.progressBar.value = 0
        self._startNextStep()

    def _startNextStep(self) -> None:
        if not self._pendingSteps:
            self._endRun(_("Done."), succeeded=True)
            self._updateDisplay(fit=True)
            return
        step = self._pendingSteps.pop(0)
        try:
            self._job, self._storeResult = step()
        except Exception as error:
            self._endRun(_("Failed."))
            slicer.util.errorDisplay(str(error))
            return
        self.ui.statusLabel.text = _("{task} on {device}...").format(task=self._job.description,
                                                                     device=self._job.device)
        self._pollTimer.start()
        self._updateButtons()

    def _pollJob(self) -> None:
        """Timer slot: deliver progress; when the job ended, load its results and start the next step."""
        if self._job is None or not self._job.poll():
            return
        job, store = self._job, self._storeResult
        self._job = None
        try:
            result = job.finish()
            store(result)
        except Exception as error:
            cancelled = job.cancelled
            self._endRun(_("Cancelled.") if cancelled else _("{task} failed: {message}").format(
                task=job.description, message=error))
            if not cancelled:
                slicer.util.errorDisplay(_("{task} failed: {message}").format(task=job.description, message=error),
                                         detailedText=job.log())
            return
        logging.info(f"{job.description} ran on {job.device}")
        self._startNextStep()

    def _onProgress(self, update) -> None:
        done = self._stepCount - len(self._pendingSteps) - 1
        self.ui.progressBar.value = int(100 * (done + update.overall) / max(self._stepCount, 1))
        task = self._job.description if self._job else ""
        device = self._job.device if self._job else ""
        self.ui.statusLabel.text = f"{task} ({device}) - {update.stage}: {update.message} {update.fraction:.0%}"

    def _cancelRun(self) -> None:
        self._pendingSteps = []
        if self._job is not None:
            self._job.cancel()

    def _endRun(self, status: str, succeeded: bool = False) -> None:
        self._pollTimer.stop()
        self._pendingSteps = []
        self._job = None
        if succeeded:
            self.ui.progressBar.value = 100
        self.ui.statusLabel.text = status
        self._updateButtons()

    # --- display ---------------------------------------------------------------------------------

    def _scheduleDisplayUpdate(self, *unused) -> None:
        # The parameter node learns the new widget value from the same signal; read it afterwards.
        qt.QTimer.singleShot(0, self._updateDisplay)

    def _updateDisplay(self, fit: bool = False) -> None:
        p = self._parameterNode
        if p is None or not (p.trusVolume and p.mriVolume):
            return
        if not (fit or self._fusionShown):
            return  # nothing fused yet: leave the views to the user
        with slicer.util.tryWithErrorDisplay(_("Could not update the fused view.")):
            self.logic.showFusion(
                p.trusVolume, p.mriVolume, p.outputTransform, opacity=p.foregroundOpacity,
                checkerboard=p.showCheckerboard, warpedNode=p.warpedMri,
                mriSegmentations=[p.mriGland, p.mriLesions],
                trusSegmentations=[p.trusGland, p.trusTumourSegmentation], fit=fit)
            self.logic.setContoursVisible([p.trusGland, p.mriGland], p.showGlandContours)
            self.logic.setContoursVisible([p.mriLesions, p.trusTumourSegmentation], p.showLesionContours)
            self._fusionShown = True


def _optionalPath(path) -> Optional[str]:
    """A path parameter as a string, or None when empty (an empty pathlib.Path reads as ".")."""
    text = str(path) if path is not None else ""
    return None if text in ("", ".") else text


#
# CLIJob
#


class CLIJob:
    """One run of the CLI: its temporary files, the subprocess and the loading of its outputs.

    ``start`` launches it; ``poll`` (from a timer) or ``run`` (blocking, keeps the GUI painted) follow it;
    ``finish`` loads the outputs as MRML nodes and deletes the temporary folder, or raises the CLI's
    one-line error message. ``cancel`` ends the process tree; the temporary folder then goes too.
    """

    def __init__(self, description: str, device: str, arguments: list, files: TempExchange,
                 loadResults: Callable, progressCallback: Optional[Callable] = None, debug: bool = False,
                 expectedStages: int = 1):
        from MRITRUSFusionLib.slicer_bridge.runner import CLIRunner

        self.description = description
        self.device = device
        self.files = files
        self._loadResults = loadResults
        self.runner = CLIRunner.for_cli(
            arguments, python=MRITRUSFusionLogic.pythonExecutable(), debug=debug, on_progress=progressCallback,
            expected_stages=expectedStages, env=MRITRUSFusionLogic.cliEnvironment(), cwd=LIBRARY_PARENT_DIR)

    def start(self) -> "CLIJob":
        logging.info("Running: " + " ".join(self.runner.command))
        try:
            self.runner.start()
        except Exception:
            self.files.close(failed=True)
            raise
        return self

    def poll(self) -> bool:
        """Deliver progress; True once the process ended."""
        return self.runner.poll() is not None

    def cancel(self) -> None:
        self.runner.cancel()

    @property
    def cancelled(self) -> bool:
        return bool(self.runner.result and self.runner.result.cancelled)

    def log(self) -> str:
        """The CLI's last stderr lines (tracebacks when run with debug)."""
        return self.runner.stderr_tail()

    def finish(self):
        """The loaded outputs; raises CLIError with the CLI's message when the run failed or was cancelled."""
        from MRITRUSFusionLib.slicer_bridge.runner import CLIError

        result = self.runner.result
        if result is None:
            raise RuntimeError(f"{self.description} is still running")
        failed = not result.succeeded
        try:
            if failed:
                raise CLIError(result.message)
            return self._loadResults()
        finally:
            kept = self.files.close(failed=failed and not result.cancelled)
            if kept:
                logging.warning(f"{self.description} failed; its temporary files are kept in {kept}")

    def run(self):
        """Start, wait while keeping Slicer responsive, and return the loaded outputs."""
        self.start()
        while not self.poll():
            slicer.app.processEvents()
            time.sleep(0.05)
        return self.finish()


#
# MRITRUSFusionLogic
#


class MRITRUSFusionLogic(ScriptedLoadableModuleLogic):
    """Scripting API. Methods take and return MRML nodes; work runs in the ``mritrus-fusion`` CLI.

    ``register``, ``segment``, ``mapTargets`` block until done (Slicer keeps repainting) and accept a
    ``progressCallback(update)`` receiving ``update.stage``, ``update.fraction``, ``update.message`` and
    ``update.overall`` (0..1). The ``start...`` variants return a running :class:`CLIJob` instead.
    Failures raise an exception whose message is the CLI's own explanation.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._cudaAvailable = None  # asked once per session, in a subprocess

    def getParameterNode(self):
        return MRITRUSFusionParameterNode(super().getParameterNode())

    # --- environment -----------------------------------------------------------------------------

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (sets up Slicer's library paths), else the current interpreter."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def cliEnvironment() -> dict:
        """Environment additions for the CLI: MRITRUSFusionLib importable from its shipped folder."""
        return {"PYTHONPATH": os.pathsep.join(filter(None, [LIBRARY_PARENT_DIR, os.environ.get("PYTHONPATH")]))}

    def resolveDevice(self, device: str) -> str:
        """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; explicit choices are kept."""
        if device == "auto" and self._cudaAvailable is None:
            self._cudaAvailable = dependencies.cuda_available(self.pythonExecutable())
        return dependencies.resolve_device(device, bool(self._cudaAvailable))

    def ensureDependencies(self, askConfirmation: bool = True) -> None:
        """Install the library's missing Python packages into Slicer's Python, asking first.

        torch comes from the CPU or the matching CUDA wheel index; packages already installed are pinned,
        so nothing Slicer ships is downgraded. Raises RuntimeError when the user declines, when the package
        index cannot be reached (the message says how to install offline) or when installation failed.
        """
        missing = dependencies.missing_packages()
        if not missing:
            return
        installed = dependencies.installed_versions()
        hasGpu, cudaVersion = dependencies.detect_nvidia_cuda()
        commands = dependencies.pip_install_commands(missing, installed, hasGpu, cudaVersion)
        names = ", ".join(package.distribution for package in missing)
        torchBuild = dependencies.torch_index_url(hasGpu, cudaVersion).rsplit("/", 1)[-1]
        question = _("MRI-TRUS Fusion needs these Python packages: {names} (torch build: {build}). "
                     "Install them now? This can take several minutes.").format(names=names, build=torchBuild)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(question):
            raise RuntimeError(_("These Python packages are required and were not installed: {names}").format(
                names=names))
        if not dependencies.package_index_reachable():
            raise RuntimeError(dependencies.offline_instructions(commands))
        self._installPackages(missing, installed, commands)
        stillMissing = dependencies.missing_packages()
        if stillMissing:
            raise RuntimeError(_("Installation finished but these packages cannot be imported: {names}. "
                                 "Restart Slicer and try again.").format(
                names=", ".join(package.distribution for package in stillMissing)))

    @staticmethod
    def _installPackages(missing: list, installed: dict, commands: list) -> None:
        """Run ``commands`` (from dependencies.pip_install_commands): torch, with its index URL, through
        slicer.util.pip_install; the rest through pip_ensure with the pins as constraints when this Slicer
        has it (slicer.pydeps, or slicer.packaging in previews), else through slicer.util.pip_install."""
        others = [package.spec for package in missing if package.distribution != "torch"]
        pipEnsure = _pipEnsure()
        for arguments in commands:
            if arguments[0].startswith("torch>") or pipEnsure is None:
                slicer.util.pip_install(" ".join(arguments))
                continue
            from packaging.requirements import Requirement

            with TempExchange(prefix="mritrus-fusion-pip-") as files:
                constraints = files.input_path("constraints", "text")
                constraints.write_text("\n".join(dependencies.pins(installed)) + "\n", encoding="utf-8")
                pipEnsure([Requirement(spec) for spec in others], constraints=str(constraints),
                          prompt_install=False, requester="MRITRUSFusion")

    # --- registration ----------------------------------------------------------------------------

    def startRegistration(self, trusNode, mriNode, method: str = "auto", device: str = "auto", trusGland=None,
                          mriGland=None, weights: Optional[str] = None, transformNode=None, warpedNode=None,
                          debug: bool = False, progressCallback: Optional[Callable] = None) -> CLIJob:
        """Start ``mritrus-fusion register`` (TRUS fixed, MRI moving). The job's result is
        ``(transformNode, warpedNode)``: the TRUS->MRI transform and the MRI resampled on the TRUS grid,
        written into the given nodes or into new ones. Gland masks are used when both are given."""
        _require(trusNode, "TRUS volume")
        _require(mriNode, "MRI volume")
        _requireChoice(method, REGISTRATION_METHODS, "registration method")
        runsOn = self.resolveDevice(device)  # shown to the user; the CLI gets `device` (auto may fall back to CPU)
        files = TempExchange(keep_on_failure=debug).open()
        try:
            arguments = ["register", "--fixed", self._writeNode(trusNode, files.input_path("trus", "volume")),
                         "--moving", self._writeNode(mriNode, files.input_path("mri", "volume"))]
            if trusGland and mriGland:
                trusMask = self._writeMask(trusGland, trusNode, files.input_path("trus_gland", "label"))
                mriMask = self._writeMask(mriGland, mriNode, files.input_path("mri_gland", "label"))
                arguments += ["--fixed-mask", trusMask, "--moving-mask", mriMask]
            arguments += ["--method", method, "--device", device] + (["--weights", str(weights)] if weights else [])
            transformPath = files.output_path("transform", "transform")
            warpedPath = files.output_path("warped_mri", "volume")
            arguments += ["--transform-out", str(transformPath), "--warped-out", str(warpedPath)]
        except Exception:
            files.close(failed=True)
            raise

        def load():
            transform = self._loadInto(slicer.util.loadTransform, transformPath, transformNode,
                                       f"{mriNode.GetName()} to TRUS")
            warped = self._loadInto(slicer.util.loadVolume, warpedPath, warpedNode, f"{mriNode.GetName()} in TRUS")
            return transform, warped

        return CLIJob(_("Registration"), runsOn, arguments, files, load, progressCallback, debug).start()

    def register(self, trusNode, mriNode, method: str = "auto", device: str = "auto",
                 progressCallback: Optional[Callable] = None, **options):
        """Register the MRI to the TRUS and return the transform node (TRUS point -> MRI point; applied to the
        MRI node it aligns the MRI with the TRUS). ``options``: trusGland, mriGland (segmentation or label
        map nodes, used when both are given), weights (checkpoint path), transformNode, warpedNode, debug."""
        job = self.startRegistration(trusNode, mriNode, method=method, device=device,
                                     progressCallback=progressCallback, **options)
        transform, _warped = job.run()
        return transform

    # --- targets ---------------------------------------------------------------------------------

    def startTargetMapping(self, markupsNode, transformNode, outputNode=None, debug: bool = False,
                           progressCallback: Optional[Callable] = None) -> CLIJob:
        """Start ``mritrus-fusion map-points``: MRI points -> TRUS points. Result: the mapped markups node."""
        _require(markupsNode, "MRI targets")
        _require(transformNode, "transform")
        files = TempExchange(keep_on_failure=debug).open()
        try:
            outputPath = files.output_path("targets", "markups")
            arguments = ["map-points",
                         "--points", self._writeNode(markupsNode, files.input_path("targets", "markups")),
                         "--transform", self._writeNode(transformNode, files.input_path("transform", "transform")),
                         "--out", str(outputPath)]
        except Exception:
            files.close(failed=True)
            raise

        def load():
            return self._loadInto(slicer.util.loadMarkups, outputPath, outputNode,
                                  f"{markupsNode.GetName()} on TRUS")

        return CLIJob(_("Target mapping"), "cpu", arguments, files, load, progressCallback, debug).start()

    def mapTargets(self, markupsNode, transformNode, outputNode=None,
                   progressCallback: Optional[Callable] = None):
        """Map MRI target points onto the TRUS; returns a new (or the given) markups node in TRUS space."""
        return self.startTargetMapping(markupsNode, transformNode, outputNode,
                                       progressCallback=progressCallback).run()

    # --- segmentation ----------------------------------------------------------------------------

    def startSegmentation(self, trusNode=None, mriNode=None, adcNode=None, transformNode=None,
                          model: str = "trus-unet", device: str = "auto", weights: Optional[str] = None,
                          threshold: float = DEFAULT_THRESHOLD, segmentationNode=None, debug: bool = False,
                          progressCallback: Optional[Callable] = None) -> CLIJob:
        """Start ``mritrus-fusion segment`` with the images ``model`` reads (``MODEL_INPUTS``). With MRI and
        TRUS, the MRI comes with the TRUS->MRI transform. Result: the segmentation node."""
        _requireChoice(model, SEGMENTATION_MODELS, "segmentation model")
        needs = MODEL_INPUTS[model]
        if "trus" in needs:
            _require(trusNode, "TRUS volume")
        if "mri" in needs:
            _require(mriNode, "MRI volume")
        if "trus" in needs and "mri" in needs:
            _require(transformNode, "transform (register first)")
        runsOn = self.resolveDevice(device)  # shown to the user; the CLI gets `device` (auto may fall back to CPU)
        files = TempExchange(keep_on_failure=debug).open()
        try:
            arguments = ["segment"] + self._segmentationInputs(needs, files, trusNode, mriNode, adcNode, transformNode)
            arguments += ["--model", model, "--device", device] + (["--weights", str(weights)] if weights else [])
            segmentationPath = files.output_path("segmentation", "segmentation")
            probabilitiesPath = files.output_path("probabilities", "probabilities")
            arguments += ["--out", str(segmentationPath), "--probabilities-out", str(probabilitiesPath)]
        except Exception:
            files.close(failed=True)
            raise
        reference = trusNode if "trus" in needs else mriNode

        def load():
            node = self._loadInto(slicer.util.loadSegmentation, segmentationPath, segmentationNode,
                                  f"{reference.GetName()} {model}")
            if abs(threshold - DEFAULT_THRESHOLD) > 1e-6:
                self._rethreshold(node, probabilitiesPath, threshold)
            return node

        return CLIJob(_("Segmentation"), runsOn, arguments, files, load, progressCallback, debug).start()

    def segment(self, trusNode=None, mriNode=None, transformNode=None, model: str = "trus-unet",
                device: str = "auto", progressCallback: Optional[Callable] = None, **options):
        """Segment with ``model`` and return the segmentation node (on the TRUS for TRUS models).
        ``options``: adcNode, weights, threshold (0..1, default 0.5), segmentationNode, debug."""
        return self.startSegmentation(trusNode=trusNode, mriNode=mriNode, transformNode=transformNode, model=model,
                                      device=device, progressCallback=progressCallback, **options).run()

    def _segmentationInputs(self, needs, files, trusNode, mriNode, adcNode, transformNode) -> list:
        arguments = []
        if "trus" in needs:
            arguments += ["--trus", self._writeNode(trusNode, files.input_path("trus", "volume"))]
        if "mri" in needs:
            arguments += ["--mri", self._writeNode(mriNode, files.input_path("mri", "volume"))]
            if adcNode:
                arguments += ["--adc", self._writeNode(adcNode, files.input_path("adc", "volume"))]
            if transformNode:
                arguments += ["--transform", self._writeNode(transformNode, files.input_path("transform", "transform"))]
        return arguments

    @staticmethod
    def _rethreshold(segmentationNode, probabilitiesPath, threshold: float) -> None:
        """Replace the segmentation by ``probability >= threshold`` (first segment's name and colour)."""
        probabilities = slicer.util.loadVolume(str(probabilitiesPath), {"show": False})
        try:
            if probabilities.GetImageData().GetNumberOfScalarComponents() != 1:
                logging.warning("Multi-class probabilities: the threshold applies to single-class models only")
                return
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            try:
                slicer.util.updateVolumeFromArray(
                    labelmap, (slicer.util.arrayFromVolume(probabilities) >= threshold).astype("uint8"))
                labelmap.CopyOrientation(probabilities)
                segmentation = segmentationNode.GetSegmentation()
                name = segmentation.GetNthSegment(0).GetName() if segmentation.GetNumberOfSegments() else "tumour"
                segmentation.RemoveAllSegments()
                slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode)
                if segmentation.GetNumberOfSegments():
                    segmentation.GetNthSegment(0).SetName(name)
            finally:
                slicer.mrmlScene.RemoveNode(labelmap)
        finally:
            slicer.mrmlScene.RemoveNode(probabilities)

    # --- evaluation ------------------------------------------------------------------------------

    def evaluateRegistration(self, fixedLabelPath: str, movingLabelPath: str, transformNode) -> dict:
        """``mritrus-fusion evaluate registration`` on label files (3D gland mask or 4D gland + landmarks):
        returns the metrics dict (``dice``, ``tre_mean_mm``, ...)."""
        files = TempExchange().open()
        arguments = ["evaluate", "registration", "--fixed-label", str(fixedLabelPath),
                     "--moving-label", str(movingLabelPath),
                     "--transform", self._writeNode(transformNode, files.input_path("transform", "transform")),
                     "--out", str(files.output_path("metrics", "json"))]
        return self._runForMetrics(_("Registration evaluation"), arguments, files)

    def evaluateSegmentation(self, predictionNode, groundTruthNode) -> dict:
        """``mritrus-fusion evaluate segmentation``: overlap and surface metrics of two segmentation nodes."""
        files = TempExchange().open()
        arguments = ["evaluate", "segmentation",
                     "--pred", self._writeNode(predictionNode, files.input_path("pred", "segmentation")),
                     "--gt", self._writeNode(groundTruthNode, files.input_path("gt", "segmentation")),
                     "--out", str(files.output_path("metrics", "json"))]
        return self._runForMetrics(_("Segmentation evaluation"), arguments, files)

    @staticmethod
    def _runForMetrics(description: str, arguments: list, files: TempExchange) -> dict:
        import json

        metricsPath = pathlib.Path(arguments[-1])
        return CLIJob(description, "cpu", arguments, files, lambda: json.loads(metricsPath.read_text(encoding="utf-8"))).run()

    # --- display ---------------------------------------------------------------------------------

    def showFusion(self, trusNode, mriNode, transformNode=None, opacity: float = 0.5, checkerboard: bool = False,
                   warpedNode=None, mriSegmentations=(), trusSegmentations=(), fit: bool = True) -> None:
        """Show the MRI over the TRUS in the slice views, segmentations as contours.

        ``transformNode`` is applied to the MRI and to ``mriSegmentations`` (gland, lesions drawn on the
        MRI), so they display on the TRUS; ``trusSegmentations`` are already there. ``opacity`` blends the
        MRI (foreground) over the TRUS (background); ``checkerboard`` instead shows tiles of TRUS and
        ``warpedNode`` (the MRI resampled on the TRUS grid). ``fit`` fits the views to the TRUS.
        """
        _require(trusNode, "TRUS volume")
        _require(mriNode, "MRI volume")
        mriSegmentations = [node for node in mriSegmentations if node]
        if transformNode:
            for node in [mriNode] + mriSegmentations:
                node.SetAndObserveTransformNodeID(transformNode.GetID())
        if checkerboard:
            _require(warpedNode, "warped MRI (register first)")
            slicer.util.setSliceViewerLayers(background=self.checkerboardVolume(trusNode, warpedNode),
                                             foreground=None, fit=fit)
        else:
            slicer.util.setSliceViewerLayers(background=trusNode, foreground=mriNode, foregroundOpacity=opacity,
                                             fit=fit)
        self.setContoursVisible(mriSegmentations + list(trusSegmentations), True)

    @staticmethod
    def setContoursVisible(segmentations, visible: bool) -> None:
        """Show segmentations (or label maps) as outlines in the slice views, or hide them."""
        for node in segmentations:
            if node:
                _showContours(node, visible)

    def checkerboardVolume(self, trusNode, warpedNode, tileMm: float = 10.0):
        """A volume on the TRUS grid tiling TRUS and warped MRI (each scaled to its 1-99th percentiles) in
        ``tileMm`` squares; reuses the node named "TRUS-MRI checkerboard"."""
        import numpy as np

        trus = slicer.util.arrayFromVolume(trusNode).astype(np.float32)
        mri = slicer.util.arrayFromVolume(warpedNode).astype(np.float32)
        if trus.shape != mri.shape:
            raise ValueError(_("The warped MRI is not on the TRUS grid: run the registration again."))
        spacingKji = trusNode.GetSpacing()[::-1]
        tiles = [(np.arange(size) * spacing // tileMm).astype(int) for size, spacing in zip(trus.shape, spacingKji)]
        odd = (tiles[0][:, None, None] + tiles[1][None, :, None] + tiles[2][None, None, :]) % 2 == 1
        name = "TRUS-MRI checkerboard"
        board = slicer.mrmlScene.GetFirstNode(name, "vtkMRMLScalarVolumeNode") or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(board, np.where(odd, _unitRange(mri), _unitRange(trus)))
        board.CopyOrientation(trusNode)
        return board

    # --- phantom sample --------------------------------------------------------------------------

    @staticmethod
    def phantomSampleFolder(seed: int = 0) -> str:
        """Where the phantom case of ``seed`` is kept between sessions (Slicer's cache folder)."""
        return os.path.join(slicer.app.cachePath, "MRITRUSFusion", f"phantom-seed{seed}")

    def phantomSampleAvailable(self, seed: int = 0) -> bool:
        folder = self.phantomSampleFolder(seed)
        return all(_firstFile(folder, sub) for sub in ("fixed_images", "moving_images", "fixed_zone_labels",
                                                       "moving_zone_labels", "moving_tumour_labels"))

    def startPhantomGeneration(self, seed: int = 0, progressCallback: Optional[Callable] = None) -> CLIJob:
        """Start ``mritrus-fusion phantom`` for one case; the result is :meth:`loadPhantomSample`'s dict."""
        files = TempExchange().open()
        generated = files.folder / "phantom"
        arguments = ["phantom", "--out", str(generated), "--cases", "1", "--seed", str(seed)]

        def load():
            target = self.phantomSampleFolder(seed)
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(str(generated), target)
            return self._loadPhantomFiles(target)

        return CLIJob(_("Phantom generation"), "cpu", arguments, files, load, progressCallback).start()

    def loadPhantomSample(self, seed: int = 0, progressCallback: Optional[Callable] = None) -> dict:
        """Load (generating it first if needed) a synthetic MRI/TRUS case with known ground truth.

        Returns nodes ``trus``, ``mri``, ``trusGland``, ``mriGland`` (segmentations), ``mriLesions``,
        ``trusLesions`` (ground-truth tumour on TRUS), ``mriTargets`` (tumour centres on the MRI),
        ``trusTargets`` (the same tumours' centres on the TRUS), ``groundTruthTransform``, plus the paths
        ``folder``, ``trusLabelFile`` and ``mriLabelFile`` (gland + landmark labels, for
        :meth:`evaluateRegistration`).
        """
        if self.phantomSampleAvailable(seed):
            return self._loadPhantomFiles(self.phantomSampleFolder(seed))
        self.ensureDependencies()
        return self.startPhantomGeneration(seed, progressCallback).run()

    def _loadPhantomFiles(self, folder: str) -> dict:
        sample = {
            "folder": folder,
            "trusLabelFile": _firstFile(folder, "fixed_labels"),  # 4D: gland, landmarks (for evaluation)
            "mriLabelFile": _firstFile(folder, "moving_labels"),
            "trus": slicer.util.loadVolume(_firstFile(folder, "fixed_images"), {"name": "Phantom TRUS"}),
            "mri": slicer.util.loadVolume(_firstFile(folder, "moving_images"), {"name": "Phantom MRI"}),
            "trusGland": _glandSegmentation(_firstFile(folder, "fixed_zone_labels"), "Phantom TRUS gland"),
            "mriGland": _glandSegmentation(_firstFile(folder, "moving_zone_labels"), "Phantom MRI gland"),
        }
        for space, key in (("moving", "mri"), ("fixed", "trus")):
            label = slicer.util.loadLabelVolume(_firstFile(folder, f"{space}_tumour_labels"))
            try:
                sample[f"{key}Lesions"] = _segmentationFromLabel(label, f"Phantom {key.upper()} lesions")
                sample[f"{key}Targets"] = _targetsFromLabel(label, f"Phantom {key.upper()} targets")
            finally:
                slicer.mrmlScene.RemoveNode(label)
        transformFile = _firstFile(folder, "transforms")
        sample["groundTruthTransform"] = slicer.util.loadTransform(transformFile) if transformFile else None
        for node in sample.values():
            if isinstance(node, slicer.vtkMRMLStorableNode):
                _forgetTemporaryFile(node)
        return sample

    # --- files -----------------------------------------------------------------------------------

    @staticmethod
    def _writeNode(node, path) -> str:
        """Write ``node`` to ``path`` in its own coordinates, leaving its storage (scene file name) alone."""
        exporter = getattr(slicer.util, "exportNode", None)
        if exporter is not None:
            exporter(node, str(path))
        elif not slicer.util.saveNode(node, str(path)):
            raise RuntimeError(f"Could not write {node.GetName()} to {path}")
        if not os.path.exists(path):
            raise RuntimeError(f"Could not write {node.GetName()} to {path}")
        return str(path)

    def _writeMask(self, maskNode, referenceVolume, path) -> str:
        """A gland mask as a 0/1 label map: segmentations are exported on ``referenceVolume``'s grid and
        all their segments merged; label map nodes are written as they are (0 = background)."""
        if not maskNode.IsA("vtkMRMLSegmentationNode"):
            return self._writeNode(maskNode, path)
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            segmentationsLogic = slicer.modules.segmentations.logic()
            segmentationsLogic.ExportVisibleSegmentsToLabelmapNode(maskNode, labelmap, referenceVolume)
            mask = slicer.util.arrayFromVolume(labelmap)
            mask[mask > 0] = 1
            slicer.util.arrayFromVolumeModified(labelmap)
            return self._writeNode(labelmap, path)
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)

    @staticmethod
    def _loadInto(loader: Callable, path, target, name: str):
        """Load ``path`` with ``loader``; copy it into ``target`` when given, else keep the new node as
        ``name``. Either way the node no longer refers to the temporary file."""
        loaded = loader(str(path))
        if loaded is None:
            raise RuntimeError(f"Slicer could not read the CLI output {path}")
        _forgetTemporaryFile(loaded)
        if target is None:
            loaded.SetName(slicer.mrmlScene.GenerateUniqueName(name))
            return loaded
        target.CopyContent(loaded)
        target.CreateDefaultDisplayNodes()
        slicer.mrmlScene.RemoveNode(loaded)
        return target


#
# Helpers
#


def _require(node, what: str) -> None:
    if node is None:
        raise ValueError(_("Missing input: {what}.").format(what=what))


def _requireChoice(value: str, choices: list, what: str) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; expected one of {', '.join(choices)}")


def _pipEnsure() -> Optional[Callable]:
    """``pip_ensure`` of this Slicer (slicer.pydeps in 5.11+, slicer.packaging in previews), or None."""
    for moduleName in ("slicer.pydeps", "slicer.packaging"):
        try:
            return importlib.import_module(moduleName).pip_ensure
        except (ImportError, AttributeError):
            continue
    return None


def _forgetTemporaryFile(node) -> None:
    """Drop the storage node pointing into a temporary folder, so saving the scene writes a new file."""
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    if storage is not None:
        node.SetAndObserveStorageNodeID(None)
        slicer.mrmlScene.RemoveNode(storage)


def _showContours(node, visible: bool) -> None:
    """Draw a segmentation (or label map) as outlines in the slice views, or hide it."""
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        slicer.util.setSliceViewerLayers(label=node if visible else None)
        for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
            sliceNode.SetUseLabelOutline(True)
        return
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetVisibility(visible)
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)


def _unitRange(array):
    """``array`` scaled so its 1st and 99th percentiles become 0 and 1 (clipped)."""
    import numpy as np

    low, high = np.percentile(array, (1, 99))
    return np.clip((array - low) / max(high - low, 1e-6), 0.0, 1.0)


def _firstFile(folder: str, subfolder: str) -> Optional[str]:
    """The first file (sorted) in ``folder/subfolder``, or None."""
    path = os.path.join(folder, subfolder)
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    return os.path.join(path, names[0]) if names else None


def _segmentationFromLabel(labelNode, name: str):
    """A segmentation node holding the label map's non-zero labels as segments."""
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelNode, segmentation)
    segmentation.CreateDefaultDisplayNodes()
    return segmentation


def _glandSegmentation(labelPath: str, name: str):
    """One "gland" segment: every non-zero voxel of a zone label file (peripheral + transition zone)."""
    label = slicer.util.loadLabelVolume(labelPath)
    try:
        zones = slicer.util.arrayFromVolume(label)
        zones[zones > 0] = 1
        slicer.util.arrayFromVolumeModified(label)
        segmentation = _segmentationFromLabel(label, name)
        if segmentation.GetSegmentation().GetNumberOfSegments():
            segmentation.GetSegmentation().GetNthSegment(0).SetName("gland")
        return segmentation
    finally:
        slicer.mrmlScene.RemoveNode(label)


def _targetsFromLabel(labelNode, name: str):
    """A point list with the centroid (RAS) of each non-zero label: one biopsy target per lesion."""
    import numpy as np

    labels = slicer.util.arrayFromVolume(labelNode)
    ijkToRas = vtk.vtkMatrix4x4()
    labelNode.GetIJKToRASMatrix(ijkToRas)
    targets = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for value in np.unique(labels[labels > 0]):
        k, j, i = np.argwhere(labels == value).mean(axis=0)
        targets.AddControlPoint(list(ijkToRas.MultiplyPoint([i, j, k, 1.0])[:3]), f"lesion {value}")
    return targets


#
# MRITRUSFusionTest
#


class MRITRUSFusionTest(ScriptedLoadableModuleTest):
    """Quick checks that need no computation; the end-to-end phantom test is
    Testing/Python/MRITRUSFusionSelfTest.py."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ParameterNodeDefaultsAndRoundTrip()
        self.setUp()
        self.test_RegistrationCommandLine()

    def test_ParameterNodeDefaultsAndRoundTrip(self):
        parameters = MRITRUSFusionLogic().getParameterNode()
        self.assertEqual(parameters.registrationMethod, "auto")
        self.assertEqual(parameters.segmentationModel, "trus-unet")
        self.assertAlmostEqual(parameters.probabilityThreshold, DEFAULT_THRESHOLD)
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "trus")
        parameters.trusVolume = volume
        parameters.registrationMethod = "bspline"
        again = MRITRUSFusionLogic().getParameterNode()
        self.assertIs(again.trusVolume, volume)
        self.assertEqual(again.registrationMethod, "bspline")
        self.assertIsNone(_optionalPath(again.registrationWeights))
        with self.assertRaises(ValueError):
            parameters.registrationMethod = "demons"

    def test_RegistrationCommandLine(self):
        """startRegistration writes the inputs and passes the contract's options (the CLI is stopped at once)."""
        import numpy as np

        trus = slicer.util.addVolumeFromArray(np.zeros((8, 9, 10), np.float32), name="trus")
        mri = slicer.util.addVolumeFromArray(np.ones((6, 7, 8), np.float32), name="mri")
        logic = MRITRUSFusionLogic()
        job = logic.startRegistration(trus, mri, method="rigid", device="cpu")
        job.cancel()
        while not job.poll():
            time.sleep(0.05)
        arguments = job.runner.command
        self.assertEqual(arguments[arguments.index("--method") + 1], "rigid")
        self.assertEqual(arguments[arguments.index("--device") + 1], "cpu")
        self.assertTrue(arguments[arguments.index("--transform-out") + 1].endswith(".h5"))
        self.assertNotIn("--fixed-mask", arguments)
        folder = job.files.folder
        self.assertTrue(os.path.exists(os.path.join(folder, "in_trus.nrrd")))
        with self.assertRaises(Exception):
            job.finish()
        self.assertFalse(os.path.exists(folder), "a cancelled run must leave no files")
