"""`recserve lake ...`: the lake (recserve.lake) — every acknowledged event and catalogue write,
kept where the offline chain reads them: its status, a window of it written out as a dataset, the
chain trained on it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from recserve.cli.main import ConfigOpt, _cfg, _fail, app, console

lake_app = typer.Typer(
    no_args_is_help=True,
    help="The lake of acknowledged events and catalogue writes: status, export, train, backfill.",
)
app.add_typer(lake_app, name="lake")

UriOpt = typer.Option(None, "--uri", help="the lake's path or pyarrow.fs URI (default: the config's lake.uri)")


def _lake(cfg, uri: str | None):
    from recserve.lake import Lake, LakeError

    try:
        return Lake(uri or cfg.lake_uri)
    except LakeError as e:
        _fail(e)


@lake_app.command("status")
def status_cmd(
    uri: str | None = UriOpt,
    as_json: bool = typer.Option(False, "--json", help="the status as JSON"),
    config: Path | None = ConfigOpt,
):
    """Files, rows, each partition's cursor, the sink's lag behind the event log (when the
    application's Redis answers) and the newest event's age."""
    import redis

    from recserve.lake import LakeError, status
    from recserve.redis_client import connect
    from recserve.streaming.eventlog import make_log

    cfg = _cfg(config)
    lake = _lake(cfg, uri)
    log = client = None
    r = connect(cfg.redis_url, timeout=3, connect_timeout=2)
    try:
        r.ping()
        log, client = make_log(cfg, r), r
    except redis.RedisError:
        pass  # the lake alone: no lag figure
    try:
        st = status(lake, log, client)
    except (LakeError, OSError) as e:
        _fail(e)
    finally:
        if log is not None:
            log.close()
    if as_json:
        print(json.dumps(st))
        return
    age = st["newest_event_age_s"]
    console.print(f"lake {st['uri']}", markup=False, highlight=False)
    console.print(
        f"  {st['rows']} events in {st['files']} files ({st['compacted_files']} compacted) over {st['hours']} hours; "
        f"newest event {'none yet' if age is None else f'{age:.0f} s ago'}",
        markup=False,
        highlight=False,
    )
    if "sink_lag" in st:
        console.print(f"  sink lag: {st['sink_lag']['events']} events not yet in the lake", highlight=False)
    else:
        console.print(f"  sink lag: unknown (Redis at {cfg.redis_shown} does not answer)", highlight=False)
    console.print(f"  catalogue changelog: {st['catalogue_changes']} files", highlight=False)


@lake_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="the dataset directory to write (replaced whole)"),
    window_days: float | None = typer.Option(None, "--window-days", help="only the last N days (default: all)"),
    uri: str | None = UriOpt,
    config: Path | None = ConfigOpt,
):
    """A window of the lake written as a dataset directory (events, items from the changelog over
    the serving generation's catalogue, meta.json): what the offline jobs read."""
    from recserve.lake import LakeError
    from recserve.offline.jobs.lake import lake_dataset
    from recserve.registry import RegistryError
    from recserve.schemas import DataError

    cfg = _cfg(config)
    t0 = time.monotonic()
    try:
        lake_dataset(cfg, None, window_days, out=out, lake_uri=uri, log=lambda m: console.print(m, markup=False))
    except (DataError, LakeError, RegistryError, OSError) as e:
        _fail(e)
    console.print(f"wrote {out} in {time.monotonic() - t0:.1f} s", markup=False)


@lake_app.command("train")
def train_cmd(
    window_days: float | None = typer.Option(None, "--window-days", help="only the last N days (default: all)"),
    uri: str | None = UriOpt,
    config: Path | None = ConfigOpt,
):
    """The chain on the lake: embeddings (with the sequence model), index and ranker trained on its
    window and published to the registry (the same as `python -m pipelines.train_on_lake`)."""
    from recserve.lake import LakeError
    from recserve.offline.jobs.lake import train_on_lake
    from recserve.registry import RegistryError
    from recserve.schemas import DataError

    cfg = _cfg(config)
    try:
        out = train_on_lake(cfg, None, window_days, lake_uri=uri, log=lambda m: console.print(m, markup=False))
    except (DataError, LakeError, RegistryError, ValueError, OSError) as e:
        _fail(e)
    console.print(json.dumps(out))


@lake_app.command("backfill")
def backfill_cmd(
    dataset: Path = typer.Argument(..., help="a dataset directory (recserve import, MovieLens, a generated world)"),
    uri: str | None = UriOpt,
    config: Path | None = ConfigOpt,
):
    """A dataset's events and items written into the lake as history, so the loop's retrains
    (`recserve retrain`) train on it beside the traffic the sinks keep."""
    from recserve.lake import LakeError, backfill
    from recserve.schemas import DataError

    cfg = _cfg(config)
    try:
        out = backfill(_lake(cfg, uri), dataset)
    except (DataError, LakeError, OSError) as e:
        _fail(e)
    console.print(f"backfilled {out['events']} events ({out['files']} files) and {out['items']} items", markup=False)
