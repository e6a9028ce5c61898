"""`recserve demo`'s output (recserve.cli.quiet): the terminal gets a line per stage and a bar per
training loop, drawn from the loops' epoch lines (recserve.offline.jobs.common); everything else the
process and its children print goes to the log; a failure shows the error whole and the log's tail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from recserve.offline.jobs.common import epoch_line, parse_epoch

ROOT = Path(__file__).resolve().parents[2]


def test_epoch_lines_read_back_through_a_ray_worker_prefix():
    line = epoch_line("train_embeddings", 3, 30, "loss=0.4123 (2.1s, 51234 pairs)")
    assert line == "[train_embeddings] epoch 3/30 loss=0.4123 (2.1s, 51234 pairs)"
    ep = parse_epoch(f"(train_task pid=4242) {line}")
    assert ep == {"label": "train_embeddings", "done": 3, "total": 30, "detail": "loss=0.4123 (2.1s, 51234 pairs)"}
    member = epoch_line("train_ranker", 2, 10, "loss=1.2000", member=3, members=4)
    assert member == "[train_ranker] member 3/4 epoch 2/10 loss=1.2000"
    assert parse_epoch(f"(fit pid=7, ip=127.0.0.1) {member}") == {
        "label": "train_ranker",
        "done": 22,  # two members of ten epochs done, two epochs of the third
        "total": 40,
        "detail": "member 3/4 loss=1.2000",
    }
    assert parse_epoch("[train_embeddings/sequence] epoch 1/50")["label"] == "train_embeddings/sequence"
    for other in (
        "[train_ranker] held-out lists' loss lowest after 7 of 30 epochs (1.2345): every member learns that long",
        "[train_embeddings] published embeddings 20250101-000001",
        "Running Dataset: epoch 3/4",
    ):
        assert parse_epoch(other) is None, other


def _run(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    script = tmp_path / "demo.py"
    log = tmp_path / "d" / "demo.log"
    script.write_text(
        "import os, subprocess, sys, time, warnings\n"
        "import typer\n"
        "from recserve.cli.quiet import Quiet\n"
        "try:\n"
        f"    with Quiet({str(log)!r}) as out:\n"
        + textwrap.indent(textwrap.dedent(body), "        ")
        + "except typer.Exit as e:  # as the typer app turns it into the exit status\n"
        "    sys.exit(e.exit_code)\n"
    )
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    return res, log.read_text()


def test_the_terminal_gets_the_stages_and_bars_the_log_gets_the_rest(tmp_path):
    res, log = _run(
        tmp_path,
        """
        out.stage("stack up: redis ..., ray ...")
        print("an INFO line on stdout")
        print("a warning on stderr", file=sys.stderr)
        os.write(2, b"\\x1b[33mthe core's own line\\x1b[0m\\r\\n")
        subprocess.run(["sh", "-c", "echo a child process line"], check=True)
        warnings.warn("a library warning")
        with out.training():
            for e in range(1, 5):
                print(f"(train_task pid=1) [train_embeddings] epoch {e}/4 loss=0.5 (1.0s, 10 pairs)")
                time.sleep(0.05)
        out.summary("embeddings v1 published (2 s)")
        out.raw("curl -s http://127.0.0.1:8000/v1/status -H 'authorization: Bearer [x]'")
        """,
    )
    assert res.returncode == 0, res.stderr
    shown = res.stdout.splitlines()
    assert shown[0] == "stack up: redis ..., ray ..."
    assert any(x.startswith("embeddings") and "4/4" in x and "loss=0.5" in x for x in shown), shown
    assert shown[-2:] == [
        "embeddings v1 published (2 s)",
        "curl -s http://127.0.0.1:8000/v1/status -H 'authorization: Bearer [x]'",
    ]
    assert len(shown) <= 4 and res.stderr == "", (shown, res.stderr)
    for line in ("an INFO line on stdout", "a warning on stderr", "the core's own line", "a child process line"):
        assert line + "\n" in log, log
    assert "a library warning" in log and "\x1b" not in log
    assert "[train_embeddings] epoch 4/4" in log and "stack up: redis" in log


def test_a_failure_is_shown_whole_with_the_log_tail(tmp_path):
    res, log = _run(
        tmp_path,
        """
        out.stage("stack up")
        print("what the job said last")
        out.fail(ValueError("the dataset is empty:\\nno events in events/*.parquet"))
        """,
    )
    assert res.returncode == 2
    assert res.stdout.splitlines() == ["stack up"]
    assert "what the job said last" in res.stderr and str(Path(tmp_path, "d", "demo.log")) in res.stderr
    assert res.stderr.endswith("error: the dataset is empty:\nno events in events/*.parquet\n"), res.stderr


def test_an_unexpected_exception_keeps_its_traceback(tmp_path):
    res, _ = _run(tmp_path, 'print("before")\nraise RuntimeError("boom")\n')
    assert res.returncode == 1
    assert "before" in res.stderr and "Traceback" in res.stderr and "RuntimeError: boom" in res.stderr
