"""The Qt-free side of the Slicer module: CLI runner, temp-file exchange, dependency helpers.

The runner is exercised with real subprocesses running small Python scripts: one reports progress
through MRITRUSFusionLib.progress and succeeds, one fails with an ``error: ...`` line, one ignores
SIGTERM and starts a grandchild that ignores it too (cancel must still end both within 2 s).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from MRITRUSFusionLib.slicer_bridge import dependencies
from MRITRUSFusionLib.slicer_bridge.exchange import SUFFIXES, TempExchange
from MRITRUSFusionLib.slicer_bridge.runner import (CLIError, CLIRunner, ProgressTracker, cli_command,
                                                   error_message)

REPO = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name == "nt", reason="process groups and /proc are POSIX")

SUCCEEDING = """
import sys
from MRITRUSFusionLib import progress
progress.set_mode("json")
print("a warning that is not progress", file=sys.stderr)
with progress.stage("load", 2) as stage:
    stage.advance(1, "trus")
    stage.advance(1, "mri")
with progress.stage("register", 4) as stage:
    for level in range(4):
        stage.advance(1, f"level {level + 1}/4")
print('{"transform": "t.h5"}')
"""

FAILING = """
import sys
from MRITRUSFusionLib import progress
progress.set_mode("json")
with progress.stage("register", 2) as stage:
    stage.advance(1)
    print("warning: mask is empty", file=sys.stderr)
    print("error: cannot read /nowhere/trus.nii.gz: no such file", file=sys.stderr)
    sys.exit(2)
"""

# argv: PID_FILE PARTIAL_OUTPUT. Ignores SIGTERM, like a CLI stuck in native code, and so does its child.
HANGING = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
with open(sys.argv[2], "w") as partial:
    partial.write("half a transform")
print('{"event": "progress", "stage": "register", "fraction": 0.1, "message": "started"}',
      file=sys.stderr, flush=True)
with open(sys.argv[1] + ".tmp", "w") as pids:
    pids.write(f"{os.getpid()} {grandchild.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


def script(tmp_path: Path, name: str, code: str) -> list:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return [sys.executable, str(path)]


def run_env() -> dict:
    return {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting to be reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for_file(path: Path, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


# --- runner -------------------------------------------------------------------------------------------

def test_cli_command_runs_the_library_module_with_json_progress():
    command = cli_command(["register", "--method", "rigid"], python="/opt/py", debug=True)
    assert command == ["/opt/py", "-m", "MRITRUSFusionLib", "--debug", "--progress", "json",
                       "register", "--method", "rigid"]


def test_progress_lines_become_ordered_callbacks_and_a_successful_result(tmp_path):
    updates = []
    runner = CLIRunner(script(tmp_path, "ok", SUCCEEDING), on_progress=updates.append, expected_stages=2,
                       env=run_env())
    result = runner.start().wait(timeout=30)

    assert result.succeeded and result.returncode == 0 and result.message == ""
    assert [(u.stage, u.fraction) for u in updates] == [
        ("load", 0.0), ("load", 0.5), ("load", 1.0),
        ("register", 0.0), ("register", 0.25), ("register", 0.5), ("register", 0.75), ("register", 1.0),
        ("register", 1.0)]
    assert [u.message for u in updates][1:3] == ["trus", "mri"]
    overall = [u.overall for u in updates]
    assert overall == sorted(overall), "overall progress went backwards"
    assert overall[2] == pytest.approx(0.45) and overall[-2] == pytest.approx(0.9) and overall[-1] == 1.0
    assert result.stdout.strip() == '{"transform": "t.h5"}'
    assert result.stderr_lines == ("a warning that is not progress",), "progress lines leaked into stderr"


def test_failure_reports_the_cli_error_line(tmp_path):
    runner = CLIRunner(script(tmp_path, "fail", FAILING), env=run_env()).start()
    result = runner.wait(timeout=30)

    assert result.returncode == 2 and not result.succeeded and not result.cancelled
    assert result.message == "cannot read /nowhere/trus.nii.gz: no such file"
    with pytest.raises(CLIError, match="cannot read /nowhere/trus.nii.gz"):
        runner.check()
    assert runner.last_update.fraction == 0.5, "progress before the failure was lost"


def test_error_message_falls_back_to_last_line_then_status():
    assert error_message(["error: first", "error: second", "trailing detail"], 1) == "second"
    assert error_message(["Traceback (most recent call last):", "ValueError: bad", ""], 1) == "ValueError: bad"
    assert error_message([], 3) == "the command exited with status 3"
    assert "signal 9" in error_message([], -9)


@posix_only
def test_cancel_kills_child_and_grandchild_within_two_seconds(tmp_path):
    pid_file = tmp_path / "pids"
    with TempExchange(parent=str(tmp_path)) as exchange:
        partial = exchange.output_path("transform", "transform")
        runner = CLIRunner(script(tmp_path, "hang", HANGING) + [str(pid_file), str(partial)]).start()
        try:
            child, grandchild = map(int, wait_for_file(pid_file).split())
            assert child == runner.pid and not process_gone(grandchild)

            started = time.monotonic()
            runner.cancel()
            result = runner.wait(timeout=5)
            while not process_gone(grandchild) and time.monotonic() - started < 5:
                time.sleep(0.02)
            elapsed = time.monotonic() - started
        finally:
            kill_group(runner.pid)  # leave no stray process behind, whatever the outcome
        folder = exchange.folder
        assert partial.exists()

    assert result.cancelled and not result.succeeded and result.message == "cancelled"
    assert process_gone(child) and process_gone(grandchild)
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert not folder.exists(), "the partial output outlived the exchange"


@posix_only
def test_wait_timeout_leaves_process_running_until_cancelled(tmp_path):
    sleeper = CLIRunner([sys.executable, "-c", "import time; time.sleep(60)"], grace_s=0.2).start()
    with pytest.raises(TimeoutError):
        sleeper.wait(timeout=0.2)
    assert sleeper.poll() is None
    sleeper.cancel()
    assert sleeper.wait(timeout=5).cancelled


def test_runner_must_be_started_before_use():
    runner = CLIRunner([sys.executable, "-c", "pass"])
    with pytest.raises(RuntimeError, match="start"):
        runner.poll()


def test_tracker_is_monotonic_and_slows_down_for_unexpected_stages():
    tracker = ProgressTracker(expected_stages=1)
    assert tracker.update("register", 0.5) == pytest.approx(0.45)
    assert tracker.update("register", 0.2) == pytest.approx(0.45), "a smaller fraction moved the bar back"
    assert tracker.update("register", 1.0) == pytest.approx(0.9)
    assert tracker.update("warp", 0.0) == pytest.approx(0.9)
    assert tracker.update("warp", 1.0) == pytest.approx(0.95)
    assert tracker.update("write", 1.0) == pytest.approx(0.975)
    assert tracker.finish() == 1.0


@pytest.mark.skipif(not (REPO / "MRITRUSFusionLib" / "cli.py").exists(), reason="the CLI is not written yet")
def test_real_cli_progress_stream_is_monotonic_and_ends_in_success(tmp_path):
    """The library's own command (not a stand-in script) speaks the protocol the runner parses."""
    updates = []
    arguments = ["phantom", "--out", str(tmp_path / "phantoms"), "--cases", "2", "--seed", "4"]
    result = CLIRunner.for_cli(arguments, on_progress=updates.append, env=run_env()).start().wait(timeout=120)
    assert result.succeeded, result.message
    fractions = [u.fraction for u in updates if u.stage == "phantom"]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions) and len(fractions) >= 3
    overall = [u.overall for u in updates]
    assert overall == sorted(overall) and overall[-1] == 1.0
    assert len(list((tmp_path / "phantoms" / "fixed_images").glob("*.nii.gz"))) == 2


def test_real_cli_failure_gives_one_clear_line(tmp_path):
    arguments = ["map-points", "--points", str(tmp_path / "missing.mrk.json"),
                 "--transform", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "out.mrk.json")]
    result = CLIRunner.for_cli(arguments, env=run_env()).start().wait(timeout=60)
    assert result.returncode != 0 and not result.cancelled
    assert "missing" in result.message and not result.message.startswith("Traceback")
    assert not (tmp_path / "out.mrk.json").exists()


# --- exchange -----------------------------------------------------------------------------------------

def test_exchange_gives_suffixed_unique_paths_and_cleans_up(tmp_path):
    with TempExchange(parent=str(tmp_path)) as exchange:
        folder = exchange.folder
        paths = [exchange.input_path("trus", "volume"), exchange.input_path("targets", "markups"),
                 exchange.output_path("trus", "segmentation"), exchange.output_path("transform", "transform")]
        assert [p.name for p in paths] == ["in_trus.nrrd", "in_targets.mrk.json", "out_trus.seg.nrrd",
                                           "out_transform.h5"]
        assert all(p.parent == folder for p in paths)
        with pytest.raises(ValueError, match="already"):
            exchange.input_path("trus", "volume")
        with pytest.raises(ValueError, match="unknown file kind"):
            exchange.output_path("x", "dicom")
        with pytest.raises(ValueError, match="role"):
            exchange.output_path("../escape", "json")
        paths[0].write_text("data")
    assert not folder.exists()
    assert set(SUFFIXES) >= {"volume", "label", "segmentation", "transform", "markups"}


def test_exchange_keeps_folder_on_failure_only_when_asked(tmp_path):
    for keep in (False, True):
        exchange = TempExchange(parent=str(tmp_path), keep_on_failure=keep)
        with pytest.raises(RuntimeError):
            with exchange:
                folder = exchange.folder
                exchange.output_path("seg", "segmentation").write_text("partial")
                raise RuntimeError("registration failed")
        assert folder.exists() == keep

    kept = TempExchange(parent=str(tmp_path), keep_on_failure=True).open()
    folder = kept.folder
    assert kept.close(failed=False) is None and not folder.exists(), "success must always clean up"


# --- dependencies -------------------------------------------------------------------------------------

NVIDIA_SMI = """
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


def test_required_packages_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {spec.replace(" ", "") for spec in project["dependencies"]}
    assert {package.spec for package in dependencies.REQUIRED_PACKAGES} == declared


def test_torch_index_follows_gpu_and_driver():
    cpu = dependencies.TORCH_CPU_INDEX
    assert dependencies.torch_index_url(False, None) == cpu
    assert dependencies.torch_index_url(False, "12.4") == cpu, "no NVIDIA GPU must mean the CPU build"
    assert dependencies.torch_index_url(True, None) == cpu
    assert dependencies.torch_index_url(True, "11.2") == cpu, "driver older than every CUDA build"
    assert dependencies.torch_index_url(True, "11.8") == "https://download.pytorch.org/whl/cu118"
    assert dependencies.torch_index_url(True, "12.5") == "https://download.pytorch.org/whl/cu124"
    assert dependencies.torch_index_url(True, "12.10") == "https://download.pytorch.org/whl/cu128"
    assert dependencies.torch_index_url(True, "99.0").startswith("https://download.pytorch.org/whl/cu")


def test_cuda_version_is_read_from_nvidia_smi():
    assert dependencies.parse_cuda_version(NVIDIA_SMI) == "12.4"
    assert dependencies.parse_cuda_version("NVIDIA-SMI has failed") is None


def test_pip_commands_install_only_missing_and_pin_what_is_present():
    required = {package.distribution: package for package in dependencies.REQUIRED_PACKAGES}
    missing = [required["torch"], required["monai"]]
    installed = {"numpy": "1.26.4", "SimpleITK": "2.3.1"}
    commands = dependencies.pip_install_commands(missing, installed, True, "12.4")

    assert commands[0] == ["torch>=2.1", "--index-url", "https://download.pytorch.org/whl/cu124"]
    assert commands[1] == ["monai>=1.3", "SimpleITK==2.3.1", "numpy==1.26.4"]
    arguments = [argument for command in commands for argument in command]
    assert not any(argument.startswith(("numpy>", "SimpleITK>")) for argument in arguments)

    only_cpu_torch = dependencies.pip_install_commands([required["torch"]], installed, False, None)
    assert only_cpu_torch == [["torch>=2.1", "--index-url", dependencies.TORCH_CPU_INDEX]]
    assert dependencies.pip_install_commands([], installed, True, "12.4") == []


def test_missing_packages_asks_importability_without_importing():
    absent = {"torch", "yaml"}
    missing = dependencies.missing_packages(importable=lambda name: name not in absent)
    assert [package.distribution for package in missing] == ["torch", "PyYAML"]
    assert dependencies.is_importable("json") and not dependencies.is_importable("no_such_module_xyz")
    import numpy
    assert dependencies.installed_versions()["numpy"] == numpy.__version__


def test_device_resolution():
    assert dependencies.resolve_device("auto", has_cuda=False) == "cpu"
    assert dependencies.resolve_device("auto", has_cuda=True) == "cuda"
    assert dependencies.resolve_device("cpu", has_cuda=True) == "cpu"
    with pytest.raises(ValueError):
        dependencies.resolve_device("gpu", has_cuda=True)


def test_offline_detection_and_message():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert dependencies.package_index_reachable("127.0.0.1", port, timeout_s=1)
    assert not dependencies.package_index_reachable("127.0.0.1", port, timeout_s=1)
    message = dependencies.offline_instructions([["monai>=1.3", "numpy==1.26.4"]])
    assert "cannot be reached" in message and "PythonSlicer -m pip install monai>=1.3 numpy==1.26.4" in message
