"""`recserve bench report`: docs/benchmarks.md is generated from benchmarks/results/*.json (no Ray, no Redis)."""

import json
import shutil
from pathlib import Path

import pytest

from recserve.bench import report

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


@pytest.fixture
def copy(tmp_path):
    """The committed results in a tmp dir, and where its page goes."""
    results = tmp_path / "benchmarks" / "results"
    shutil.copytree(RESULTS, results)
    return results, tmp_path / "docs" / "benchmarks.md"


def test_the_committed_page_is_what_the_committed_jsons_give():
    assert PAGE.read_text() == report.render(RESULTS, PAGE.parent), (
        "docs/benchmarks.md is stale: run `recserve bench report`"
    )
    assert report.check_page(RESULTS, PAGE) is None


def test_the_page_says_it_is_generated_and_covers_every_json():
    text = report.render(RESULTS, PAGE.parent)
    assert text.splitlines()[0] == report.HEADER
    assert "do not edit this page by hand" in text.splitlines()[0]
    for f in report.load_results(RESULTS):
        assert f'<a id="{report.anchor_of(f)}"></a>' in text, f
        assert f"(`{f}`)" in text
    for b in report.BENCHES:  # every known section names its command
        if (RESULTS / b.file).exists():
            assert f"```bash\n{b.command}\n```" in text


def test_the_output_is_deterministic(copy):
    results, page = copy
    assert report.render(results, page.parent) == report.render(results, page.parent)
    # the same figures in another key order give the same page
    f = results / "serving.json"
    data = json.loads(f.read_text())
    f.write_text(json.dumps(dict(reversed(list(data.items()))), indent=1))
    assert report.render(results, page.parent) == report.render(RESULTS, PAGE.parent)


def test_a_changed_figure_changes_the_page_and_check_names_what_to_regenerate(copy):
    results, page = copy
    report.write_page(results, page)
    assert report.check_page(results, page) is None
    before = page.read_text()
    f = results / "serving.json"
    data = json.loads(f.read_text())
    data["cases"]["recommend"]["4"]["rps"] = 4321.0
    data["targets"]["recommend_vs_noop_ge_0_25"] = True
    f.write_text(json.dumps(data))
    after = report.render(results, page.parent)
    assert after != before
    assert "4,321.0" in after and "4,321.0" not in before
    problem = report.check_page(results, page)
    assert problem is not None
    assert str(page) in problem and "recserve bench report" in problem
    assert "serving.json" in problem and "stream.json" not in problem
    report.write_page(results, page)
    assert report.check_page(results, page) is None


def test_keys_missing_in_an_older_file_are_skipped(copy):
    results, page = copy
    (results / "index.json").write_text(json.dumps({"n": 1000, "targets": {"recall_ge_0_95": True}}))
    (results / "serving.json").write_text(json.dumps({"cases": {"recommend": {"4": {"rps": 12.5}}}}))
    (results / "chaos.json").write_text(json.dumps({"requests": 3}))
    text = report.render(results, page.parent)
    assert "| vectors | 1,000 |" in text
    assert "`recall_ge_0_95`" in text and "✔ met" in text
    assert "12.5" in text
    assert "| answers | 3 |" in text


def test_an_unknown_json_gets_a_generic_section(copy):
    results, page = copy
    (results / "new_bench.json").write_text(json.dumps({"qps": 12.25, "targets": {"qps_ge_10": True}}))
    text = report.render(results, page.parent)
    assert '<a id="new-bench"></a>' in text
    assert "add this file to BENCHES" in text
    assert "| `qps` | 12.25 |" in text


def test_a_missing_results_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(report.ReportError, match="no benchmark results at .*nowhere"):
        report.render(missing, tmp_path)
    with pytest.raises(report.ReportError, match="no benchmark results"):
        report.check_page(missing, tmp_path / "benchmarks.md")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.ReportError, match="holds no"):
        report.render(empty, tmp_path)


def test_a_file_that_is_not_json_is_named(copy):
    results, page = copy
    (results / "stream.json").write_text("{not json")
    with pytest.raises(report.ReportError, match="stream.json is not readable JSON"):
        report.render(results, page.parent)


def test_the_command_checks_and_writes(copy):
    from typer.testing import CliRunner

    from recserve.cli import app

    results, page = copy
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "report", "--results", str(results), "--out", str(page), "--check"])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = runner.invoke(app, ["bench", "report", "--results", str(results), "--out", str(page)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["bench", "report", "--results", str(results), "--out", str(page), "--check"])
    assert r.exit_code == 0, r.output
    from recserve.bench.report import num

    figure = num(json.loads((results / "stream.json").read_text())["events_per_s"])  # one of stream.json's
    assert figure in page.read_text()
    page.write_text(page.read_text().replace(figure, "1.0"))
    r = runner.invoke(app, ["bench", "report", "--results", str(results), "--out", str(page), "--check"])
    assert r.exit_code == 1 and "stream.json" in r.output
    r = runner.invoke(app, ["bench", "report", "--results", str(results / "missing"), "--out", str(page)])
    assert r.exit_code == 2 and "no benchmark results" in r.output


def test_cpu_per_process_follows_pids_not_titles():
    """Ray retitles an actor's process while a method runs: a reading keyed by title counted the
    controller's whole life when its title changed between the two readings."""
    from recserve.bench.serving import cpu_between, process_name

    assert process_name("ray::ServeController.listen_for_change") == "ray::ServeController"
    assert process_name("ray::ServeReplica:nocache:Ingress.handle_request --x") == "ray::ServeReplica:nocache:Ingress"
    before = {10: ("ray::ServeController", 500.0), 11: ("ray::ServeReplica:a:Ingress", 20.0)}
    after = {
        10: (process_name("ray::ServeController.listen_for_change"), 500.25),
        11: ("ray::ServeReplica:a:Ingress", 23.0),
        12: ("ray::ServeReplica:a:Ingress", 1.0),  # a replica started in between: all of its CPU
    }
    got = cpu_between(before, after)
    assert got == {"ray::ServeController": 0.25, "ray::ServeReplica:a:Ingress": 4.0}
