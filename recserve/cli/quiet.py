"""What `recserve demo` shows while it works (`Quiet`): one line per stage and a progress bar per
training loop on the terminal; everything else this process prints — Ray's INFO lines and startup
logs, Ray Data's progress, the Ray workers' output forwarded to the driver, library warnings, and
what the children started here write — goes to a log file. A failure is shown whole, with the last
lines of that log. `Plain` is the same interface for the other commands: everything on the console,
as before.

The training loops' epoch lines (recserve.offline.jobs.common.epoch_line, printed from inside their
Ray tasks) reach this process through Ray's log stream; the bars are drawn from them as they pass
into the log.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# what the bars are called: the training loops' labels (recserve.offline.jobs.embeddings, ranker)
LABELS = {
    "train_embeddings": "embeddings",
    "train_embeddings/sequence": "sequence model",
    "train_ranker/embeddings": "ranker: its embeddings",
    "train_ranker/sequence": "ranker: its sequence model",
    "train_ranker": "ranker",
}
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
TAIL = 20  # lines of the log shown with a failure
SETTLE_S = 3.0  # how long the last epoch lines may take through Ray's log stream after a job returns


def clean(text: str) -> str:
    """A line as the log keeps it: terminal escape sequences removed, trailing space stripped."""
    return ANSI.sub("", text).rstrip()


class Plain:
    """Every line on the console (the commands' output as it always was)."""

    def __init__(self, console: Console):
        self.console = console

    def stage(self, text: str) -> None:
        """A stage's line."""
        self.console.print(text)

    def summary(self, text: str) -> None:
        """A stage's one line where the plain output has already shown the stage's own lines."""

    def raw(self, text: str) -> None:
        """A line as it is, never wrapped (a command to copy)."""
        print(text, flush=True)

    @contextlib.contextmanager
    def training(self):
        """Around a stage whose training loops print epoch lines."""
        yield

    def fail(self, e: Exception):
        from recserve.cli.main import _fail

        _fail(e)


class Quiet(Plain):
    """A context: inside it this process's stdout and stderr (file descriptors 1 and 2: Python's,
    Ray's core's, the children's) go through a pipe into `log_path`; the terminal gets only the
    stage lines and the bars. Leaving it puts the terminal back; after a failure it shows the error
    and the log's tail."""

    def __init__(self, log_path: str | Path, labels: dict[str, str] | None = None):
        self.log_path = Path(log_path)
        self.labels = LABELS if labels is None else labels
        self.error: str | None = None
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._bars: dict[str, int] = {}
        self._last_line = 0.0

    # ---------------------------------------------------------------- the redirection
    def __enter__(self) -> Quiet:
        from recserve.offline.jobs.common import parse_epoch  # here: it brings pandas, too slow for --help

        self._parse = parse_epoch
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", buffering=1, errors="replace")  # closed in __exit__
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        width = shutil.get_terminal_size().columns  # now: stdout is the pipe below from here on
        self.console = Console(file=os.fdopen(os.dup(1), "w", buffering=1), width=width)
        r, w = os.pipe()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        for stream in (sys.stdout, sys.stderr):  # timely lines into the pipe, whatever stdout was
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(line_buffering=True)
        self._reader = threading.Thread(target=self._pump, args=(r,), name="demo-log", daemon=True)
        self._reader.start()
        return self

    def __exit__(self, et, e, tb) -> bool:
        self._stop_bars()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)  # the pipe's write end closes: the reader drains it and ends
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._reader.join(timeout=5)
        failed = et is not None and not (
            issubclass(et, (typer.Exit, SystemExit)) and getattr(e, "exit_code", getattr(e, "code", 1)) in (0, None)
        )
        if failed and not issubclass(et, KeyboardInterrupt):
            self._show_failure()
        with contextlib.suppress(OSError):
            self.console.file.flush()
        self._log.close()
        return False

    def _pump(self, fd: int) -> None:
        buf = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, buf = re.split(rb"\r\n|\n|\r", buf + chunk)
                for line in lines:
                    self._line(line.decode(errors="replace"))
        if buf:
            self._line(buf.decode(errors="replace"))

    def _line(self, text: str) -> None:
        text = clean(text)
        if not text.strip():
            return
        with self._lock:
            self._log.write(text + "\n")
        ep = self._parse(text)
        if ep is not None:
            self._advance(ep)

    def _show_failure(self) -> None:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        if self.error and lines and lines[-1] == clean(self.error).splitlines()[-1]:
            lines = lines[: -len(self.error.splitlines())]  # shown whole below, once
        if lines:
            print(f"the last lines of {self.log_path}:", file=sys.stderr)
            print("\n".join("  " + x for x in lines[-TAIL:]), file=sys.stderr)
        if self.error:
            print(self.error, file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- what the terminal shows
    def _to_log(self, text: str) -> None:
        with self._lock:
            self._log.write(clean(text) + "\n")

    def stage(self, text: str) -> None:
        self._to_log(text)
        # on a terminal wrapped to its width; into a file or a pipe one line as it is
        self.console.print(text, soft_wrap=not self.console.is_terminal)

    def summary(self, text: str) -> None:
        self.stage(text)

    def raw(self, text: str) -> None:
        self._to_log(text)
        self.console.file.write(text + "\n")
        self.console.file.flush()

    def fail(self, e: Exception):
        """The error is shown whole once the terminal is back, after the log's tail."""
        self.error = f"error: {e}"
        self._to_log(self.error)
        raise typer.Exit(2)

    @contextlib.contextmanager
    def training(self):
        progress = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("epochs"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            redirect_stdout=False,  # what this process prints goes to the log, not above the bars
            redirect_stderr=False,
        )
        with self._lock:
            self._progress, self._bars = progress, {}
        progress.start()
        try:
            yield
            # the job has returned; its last epoch lines may still be on their way through Ray's log stream
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline and not all(t.finished for t in progress.tasks):
                time.sleep(0.1)
        finally:
            self._stop_bars()

    def _stop_bars(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, None
        if progress is not None:
            progress.stop()

    def _advance(self, ep: dict) -> None:
        with self._lock:
            progress = self._progress
            if progress is None:
                return
            bar = self._bars.get(ep["label"])
            if bar is None:
                name = self.labels.get(ep["label"], ep["label"])
                bar = self._bars[ep["label"]] = progress.add_task(name, total=ep["total"], detail="")
            # the loss, not the timings (the bar has its own clock)
            progress.update(bar, completed=ep["done"], total=ep["total"], detail=ep["detail"].split(" (")[0])
