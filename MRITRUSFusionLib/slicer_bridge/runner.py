"""Run the ``mritrus-fusion`` command line as a cancellable subprocess and follow its progress.

The CLI runs in its own process group (POSIX session, Windows process group) so that
:meth:`CLIRunner.cancel` ends it *and* every process it started (e.g. data-loader workers). Its stderr is read
line by line on a background thread: JSON progress lines (see :mod:`MRITRUSFusionLib.progress`) are
queued, every other line is kept for the error message. Queued progress is handed to the caller's
callback from :meth:`CLIRunner.poll` / :meth:`CLIRunner.wait`, i.e. on the thread that polls -- the Qt
main thread in Slicer -- so the callback may touch widgets.

Typical use::

    runner = CLIRunner.for_cli(["register", "--fixed", trus, ...], on_progress=print).start()
    result = runner.wait()          # or call runner.poll() from a timer; runner.cancel() to stop
    if not result.succeeded:
        raise CLIError(result.message)   # the CLI's ``error: ...`` line
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

from ..progress import parse_progress_line

#: Prefix of the one line the CLI prints on stderr when it fails.
ERROR_PREFIX = "error: "
#: Seconds between the polite stop request (SIGTERM) and the kill of the process tree (POSIX).
DEFAULT_GRACE_S = 1.0
#: Seconds to wait, after the process exited, for its pipes to be read to the end.
_DRAIN_S = 1.0
_POLL_INTERVAL_S = 0.02


class ProgressUpdate(NamedTuple):
    """One progress report: ``fraction`` of ``stage`` done (0..1) and ``overall``, monotonic 0..1."""

    stage: str
    fraction: float
    message: str
    overall: float


class RunResult(NamedTuple):
    """How a run ended. ``message`` is empty on success, else the CLI's error text or ``cancelled``."""

    returncode: int
    cancelled: bool
    message: str
    stdout: str
    stderr_lines: tuple

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.cancelled


class CLIError(RuntimeError):
    """A CLI run failed or was cancelled; the message is the CLI's own one-line explanation."""


def cli_command(arguments: Sequence[str], python: Optional[str] = None, debug: bool = False) -> list:
    """``[python, -m, MRITRUSFusionLib, (--debug), --progress, json, *arguments]``."""
    command = [python or sys.executable, "-m", "MRITRUSFusionLib"]
    if debug:
        command.append("--debug")
    return command + ["--progress", "json", *[str(argument) for argument in arguments]]


def error_message(stderr_lines: Sequence[str], returncode: int) -> str:
    """The text of the last ``error: ...`` line, else the last non-empty line, else the exit status."""
    for line in reversed(stderr_lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):].strip()
    for line in reversed(stderr_lines):
        if line.strip():
            return line.strip()
    if returncode < 0:
        return f"the command was stopped by signal {-returncode}"
    return f"the command exited with status {returncode}"


class ProgressTracker:
    """Folds per-stage fractions into one overall fraction that never decreases.

    The first ``expected_stages`` stages share the bar up to :attr:`BEFORE_EXIT` equally; any stage
    beyond them gets half of what is left, so an unexpected extra stage slows the bar down instead of
    filling it or moving it back. Only :meth:`finish` (the run succeeded) reaches 1.
    """

    #: Overall fraction reached when the expected stages are done; the rest is for writing and exiting.
    BEFORE_EXIT = 0.9

    def __init__(self, expected_stages: int = 1):
        self.expected_stages = max(int(expected_stages), 1)
        self.overall = 0.0
        self._stage: Optional[str] = None
        self._count = 0
        self._start = 0.0
        self._span = 0.0

    def update(self, stage: str, fraction: float) -> float:
        """Record ``fraction`` (clamped to 0..1) of ``stage``; returns the overall fraction."""
        if stage != self._stage:
            self._begin(stage)
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.overall = max(self.overall, min(self._start + self._span * fraction, 1.0))
        return self.overall

    def finish(self) -> float:
        self.overall = 1.0
        return self.overall

    def _begin(self, stage: str) -> None:
        self._start += self._span  # the previous stage counts as complete
        self._stage = stage
        self._count += 1
        if self._count <= self.expected_stages:
            self._span = self.BEFORE_EXIT / self.expected_stages
        else:
            self._span = (1.0 - self._start) / 2.0


class CLIRunner:
    """One subprocess run with progress parsing, cancellation of its process tree and a final result."""

    def __init__(self, command: Sequence[str], on_progress: Optional[Callable[[ProgressUpdate], None]] = None,
                 expected_stages: int = 1, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                 grace_s: float = DEFAULT_GRACE_S):
        self.command = [str(part) for part in command]
        self.on_progress = on_progress
        self.env = dict(env or {})
        self.cwd = cwd
        self.grace_s = grace_s
        self.tracker = ProgressTracker(expected_stages)
        self.last_update: Optional[ProgressUpdate] = None
        self._process: Optional[subprocess.Popen] = None
        self._readers: list = []
        self._events: queue.Queue = queue.Queue()
        self._stderr_lines: list = []
        self._stdout_lines: list = []
        self._cancel_requested = threading.Event()
        self._exited_at: Optional[float] = None
        self._result: Optional[RunResult] = None

    @classmethod
    def for_cli(cls, arguments: Sequence[str], python: Optional[str] = None, debug: bool = False,
                **options) -> "CLIRunner":
        """A runner for ``python -m MRITRUSFusionLib --progress json ARGUMENTS``."""
        return cls(cli_command(arguments, python=python, debug=debug), **options)

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    @property
    def result(self) -> Optional[RunResult]:
        """The final result once :meth:`poll` or :meth:`wait` has seen the run end, else ``None``."""
        return self._result

    def stderr_tail(self, lines: int = 20) -> str:
        """The last non-progress stderr lines (tracebacks in ``--debug`` mode), for a details box."""
        return "\n".join(self._stderr_lines[-lines:])

    def start(self) -> "CLIRunner":
        if self._process is not None:
            raise RuntimeError("this runner was already started")
        environment = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=environment, cwd=self.cwd,
            **_own_process_group())
        self._readers = [_start_reader(self._process.stderr, self._on_stderr_line),
                         _start_reader(self._process.stdout, self._stdout_lines.append)]
        return self

    def poll(self) -> Optional[int]:
        """Deliver queued progress to ``on_progress``; the exit status once the run ended, else ``None``."""
        self._require_started()
        self._dispatch_progress()
        if self._result is not None:
            return self._result.returncode
        returncode = self._process.poll()
        if returncode is None:
            return None
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        readers_busy = any(reader.is_alive() for reader in self._readers)
        if readers_busy and time.monotonic() - self._exited_at < _DRAIN_S:
            return None
        self._dispatch_progress()
        self._finish(returncode)
        return returncode

    def wait(self, timeout: Optional[float] = None) -> RunResult:
        """Block until the run ends (delivering progress meanwhile) and return its result.

        Raises ``TimeoutError`` after ``timeout`` seconds; the process keeps running then.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.command[0]} still running after {timeout} s")
            time.sleep(_POLL_INTERVAL_S)
        return self._result

    def check(self, timeout: Optional[float] = None) -> RunResult:
        """:meth:`wait`, then raise :class:`CLIError` with the CLI's message unless the run succeeded."""
        result = self.wait(timeout)
        if not result.succeeded:
            raise CLIError(result.message)
        return result

    def cancel(self) -> None:
        """Ask the whole process tree to stop now and kill it ``grace_s`` seconds later. Returns at once."""
        self._require_started()
        if self._result is not None or self._cancel_requested.is_set():
            return
        self._cancel_requested.set()
        _request_stop(self._process)
        threading.Thread(target=self._kill_after_grace, name="mritrus-cancel", daemon=True).start()

    def _kill_after_grace(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            self._process.poll()  # reap the child so that an exited child does not count as alive
            if not _tree_alive(self._process):
                return
            time.sleep(_POLL_INTERVAL_S)
        _kill_tree(self._process)

    def _on_stderr_line(self, line: str) -> None:
        event = parse_progress_line(line)
        if event is None:
            self._stderr_lines.append(line.rstrip("\r\n"))
        else:
            self._events.put(event)

    def _dispatch_progress(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            try:
                stage, fraction = str(event.get("stage", "")), float(event.get("fraction", 0.0))
            except (TypeError, ValueError):
                continue  # a malformed event is not worth failing the run for
            overall = self.tracker.update(stage, fraction)
            self._deliver(ProgressUpdate(stage, fraction, str(event.get("message", "")), overall))

    def _deliver(self, update: ProgressUpdate) -> None:
        self.last_update = update
        if self.on_progress is not None:
            self.on_progress(update)

    def _finish(self, returncode: int) -> None:
        cancelled = self._cancel_requested.is_set() and returncode != 0
        if cancelled:
            message = "cancelled"
        elif returncode != 0:
            message = error_message(self._stderr_lines, returncode)
        else:
            message = ""
            stage = self.last_update.stage if self.last_update else ""
            self._deliver(ProgressUpdate(stage, 1.0, "done", self.tracker.finish()))
        self._result = RunResult(returncode, cancelled, message, "".join(self._stdout_lines),
                                 tuple(self._stderr_lines))

    def _require_started(self) -> None:
        if self._process is None:
            raise RuntimeError("call start() first")


def _start_reader(stream, handle_line: Callable[[str], None]) -> threading.Thread:
    def read_lines() -> None:
        with stream:
            for line in stream:
                handle_line(line)

    thread = threading.Thread(target=read_lines, name="mritrus-reader", daemon=True)
    thread.start()
    return thread


def _own_process_group() -> dict:
    """Popen options that put the child at the head of a new process group (and, on POSIX, session)."""
    if os.name == "nt":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


def _request_stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (POSIX), so the CLI can delete its partial outputs.

    Windows has no signal a console process group reliably receives from a GUI parent, and
    ``taskkill /T`` cannot find the children once their parent has exited, so there the tree is
    killed at once.
    """
    if os.name == "nt":
        _kill_tree(process)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL to the process group (POSIX) or ``taskkill /T /F`` of the process tree (Windows)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False)
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty


def _tree_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the child's group still exists (on Windows: whether the child runs)."""
    if os.name == "nt":
        return process.poll() is None
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
