"""The Python packages the library needs, which are missing, and the pip commands that install them.

Pure helpers for the Slicer module (which shows the prompt and calls Slicer's pip functions):

- :func:`missing_packages` checks imports without importing (``importlib.util.find_spec``).
- :func:`torch_index_url` picks the PyTorch wheel index from the GPU situation: the CPU build without
  an NVIDIA GPU, otherwise the newest CUDA build the driver supports.
- :func:`pip_install_commands` installs only what is missing and pins every required package that is
  already present (``name==installed``), so pip never downgrades -- or upgrades -- what Slicer ships.

Standard library only: this module must import in a bare Slicer Python.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import subprocess
from importlib import metadata
from typing import Callable, Mapping, NamedTuple, Optional, Sequence


class Package(NamedTuple):
    """A required package: the name to import, the name pip knows and the minimum version."""

    import_name: str
    distribution: str
    minimum: str

    @property
    def spec(self) -> str:
        """The pip requirement, e.g. ``torch>=2.1``."""
        return f"{self.distribution}>={self.minimum}"


#: What ``pyproject.toml`` lists under ``[project] dependencies`` (a test keeps the two in step).
REQUIRED_PACKAGES = (
    Package("numpy", "numpy", "1.23"),
    Package("scipy", "scipy", "1.9"),
    Package("SimpleITK", "SimpleITK", "2.2"),
    Package("nibabel", "nibabel", "5.0"),
    Package("nrrd", "pynrrd", "1.0"),
    Package("slicerio", "slicerio", "1.0"),
    Package("torch", "torch", "2.1"),
    Package("monai", "monai", "1.3"),
    Package("tqdm", "tqdm", "4.60"),
    Package("yaml", "PyYAML", "6.0"),
    Package("pydantic", "pydantic", "2.0"),
    Package("matplotlib", "matplotlib", "3.6"),
    Package("picai_eval", "picai_eval", "1.4"),
    Package("tensorboard", "tensorboard", "2.14"),
)

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: CUDA versions (major, minor) with PyTorch wheel indexes ``.../whl/cuXY``; extend when PyTorch adds one.
TORCH_CUDA_BUILDS = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (13, 0))
PACKAGE_INDEX_HOST = "pypi.org"


def is_importable(import_name: str) -> bool:
    """Whether ``import import_name`` would find the package (without importing it)."""
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(packages: Sequence[Package] = REQUIRED_PACKAGES,
                     importable: Callable[[str], bool] = is_importable) -> list:
    """The packages of ``packages`` that cannot be imported, in order."""
    return [package for package in packages if not importable(package.import_name)]


def installed_versions(packages: Sequence[Package] = REQUIRED_PACKAGES) -> dict:
    """``{distribution: version}`` of the packages of ``packages`` that are installed."""
    versions = {}
    for package in packages:
        try:
            versions[package.distribution] = metadata.version(package.distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def parse_cuda_version(nvidia_smi_output: str) -> Optional[str]:
    """The ``CUDA Version: X.Y`` the driver supports, from ``nvidia-smi`` output; ``None`` if absent."""
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", nvidia_smi_output)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def detect_nvidia_cuda(timeout_s: float = 10.0) -> tuple:
    """``(has_nvidia_gpu, cuda_version)`` from ``nvidia-smi``; ``(False, None)`` when it is absent or fails."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return False, None
    try:
        completed = subprocess.run([executable], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return False, None
    if completed.returncode != 0:
        return False, None
    return True, parse_cuda_version(completed.stdout)


def torch_index_url(has_nvidia_gpu: bool, cuda_version: Optional[str]) -> str:
    """The PyTorch wheel index to install from: CPU, or the newest CUDA build not newer than the driver's."""
    if not has_nvidia_gpu or not cuda_version:
        return TORCH_CPU_INDEX
    match = re.match(r"^(\d+)\.(\d+)", cuda_version.strip())
    if match is None:
        return TORCH_CPU_INDEX
    driver = (int(match.group(1)), int(match.group(2)))
    usable = [build for build in TORCH_CUDA_BUILDS if build <= driver]
    if not usable:
        return TORCH_CPU_INDEX
    major, minor = max(usable)
    return f"https://download.pytorch.org/whl/cu{major}{minor}"


def pins(installed: Mapping[str, str]) -> list:
    """``name==version`` for every installed package: pip may then neither downgrade nor upgrade them."""
    return [f"{name}=={version}" for name, version in sorted(installed.items())]


def pip_install_commands(missing: Sequence[Package], installed: Mapping[str, str], has_nvidia_gpu: bool,
                         cuda_version: Optional[str]) -> list:
    """Arguments of the ``pip install`` runs that add the ``missing`` packages, in order.

    torch comes first, from the index :func:`torch_index_url` picks (later packages that depend on it
    then find it installed); the other missing packages follow in one run together with :func:`pins`
    of the ``installed`` ones. Nothing to install gives an empty list.
    """
    commands = []
    torch = [package for package in missing if package.distribution == "torch"]
    others = [package for package in missing if package.distribution != "torch"]
    if torch:
        commands.append([torch[0].spec, "--index-url", torch_index_url(has_nvidia_gpu, cuda_version)])
    if others:
        commands.append([package.spec for package in others] + pins(installed))
    return commands


def package_index_reachable(host: str = PACKAGE_INDEX_HOST, port: int = 443, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the package index can be opened (``False`` when offline)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def offline_instructions(commands: Sequence[Sequence[str]], python: str = "PythonSlicer") -> str:
    """A message telling how to install the packages by hand on a machine without internet access."""
    lines = [f"  {python} -m pip install {' '.join(arguments)}" for arguments in commands]
    return ("The Python package index ({host}) cannot be reached, so the missing packages cannot be "
            "installed now. Connect to the internet and try again, or install them from a local wheel "
            "folder (add --no-index --find-links FOLDER):\n".format(host=PACKAGE_INDEX_HOST) + "\n".join(lines))


def cuda_available(python: str, timeout_s: float = 120.0) -> bool:
    """Whether torch in the Python ``python`` can use CUDA; asked in a subprocess so torch (and CUDA)
    stay out of the calling process. ``False`` when torch is missing or the check fails."""
    code = "import torch, sys; sys.stdout.write(str(torch.cuda.is_available()))"
    try:
        completed = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                                   check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return completed.returncode == 0 and completed.stdout.strip() == "True"


def resolve_device(requested: str, has_cuda: bool) -> str:
    """The device a run will use: ``auto`` becomes ``cuda`` when available, else ``cpu``."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested
