"""The loop's retrain (`python -m pipelines.retrain`, `recserve retrain`): a candidate generation
trained on the lake's window and judged against the serving one.

  1. export   the lake's last `retrain.window_days` (every acknowledged event, the catalogue as the
              changelog left it) as a dataset; its newest `retrain.holdout` share of events (by
              time) is held out, the rest is the candidate's training set
  2. train    embeddings with the sequence model, index, ranker on it: published to the registry
              without moving `latest` (nothing serves them yet)
  3. gate     both generations rank for the held-out users from the same history
              (recserve.offline.gate): Recall@10 and NDCG@10 compared pairwise, with intervals,
              and the logged impressions' off-policy estimates where there are any
  4. publish  a `generation` version naming the candidate's parts, with the verdict and figures:
              `candidate` when it passed, `rejected` (kept, never served) when it did not

One run at a time: a lock in Redis (retrain:lock) whose TTL a heartbeat renews; a second run is
refused with the first one's stage. Its progress and end are in retrain:status. A run that fails
deletes what it published and its dataset: the registry and what serves are as they were. A run
killed outright (no heartbeat) leaves its half-made versions, which are never served (no pointer
names them); the next run deletes them first."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from recserve import generations, keys
from recserve.config import Config
from recserve.offline.jobs.common import Progress, say
from recserve.registry import Registry


class RetrainBusy(ValueError):
    """Another retrain holds the lock."""


class RetrainStatus:
    """retrain:status in Redis and the lock's heartbeat."""

    def __init__(self, r, cfg: Config, run: str):
        self.r, self.cfg, self.run = r, cfg, run
        self.state: dict = {"run": run, "state": "running", "stage": "starting", "started_at": time.time()}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        ttl = int(self.cfg.retrain.lock_ttl_s)
        if not self.r.set(keys.RETRAIN_LOCK, self.run, nx=True, ex=ttl):
            holder = self.r.get(keys.RETRAIN_LOCK)
            cur = read_status(self.r) or {}
            raise RetrainBusy(
                f"retrain {holder.decode() if holder else '?'} is running (stage {cur.get('stage', '?')}, started "
                f"{time.strftime('%H:%M:%S', time.localtime(cur.get('started_at', 0)))}): one run at a time; "
                f"see `recserve retrain status`"
            )
        self.write()
        self._beat = threading.Thread(target=self._heartbeat, name="retrain-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        ttl = int(self.cfg.retrain.lock_ttl_s)
        while not self._stop.wait(max(1.0, ttl / 4)):
            try:
                # renew only our own lock (a run counted dead meanwhile must not take it back)
                self.r.eval(
                    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end",
                    1,
                    keys.RETRAIN_LOCK,
                    self.run,
                    ttl,
                )
                self.state["beat"] = time.time()
                self.write()
            except Exception:  # noqa: BLE001 - Redis away for a moment: the next beat tries again
                pass

    def write(self) -> None:
        self.r.set(keys.RETRAIN_STATUS, json.dumps(self.state, default=str))

    def stage(self, stage: str, **extra) -> None:
        self.state.update(stage=stage, stage_at=time.time(), **extra)
        self.write()

    def end(self, state: str, **extra) -> None:
        self._stop.set()
        self.state.update(state=state, ended_at=time.time(), **extra)
        self.write()
        self.r.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end",
            1,
            keys.RETRAIN_LOCK,
            self.run,
        )


def read_status(r) -> dict | None:
    """The last retrain's status; a 'running' one whose lock is gone is reported 'interrupted'."""
    raw = r.get(keys.RETRAIN_STATUS)
    if not raw:
        return None
    st = json.loads(raw)
    if st.get("state") == "running":
        holder = r.get(keys.RETRAIN_LOCK)
        if holder is None or holder.decode() != st.get("run"):
            st["state"] = "interrupted"
            st["why"] = (
                f"its heartbeat stopped in stage {st.get('stage')!r} (killed?); nothing it made serves, "
                f"and the next retrain deletes it"
            )
    return st


def _sweep(reg: Registry, r, log: Progress) -> None:
    """Delete what an interrupted run published (never served: no pointer names it) and its dataset."""
    st = read_status(r)
    if not st or st.get("state") not in ("interrupted", "failed"):
        return
    keep = generations.protected(reg)
    for name, v in (st.get("published") or {}).items():
        dead = name in generations.PARTS and v not in keep.get(name, set()) and v != reg.latest(name)
        if dead and v in reg.versions(name):
            reg.delete_version(name, v)
            log(f"deleted {name} {v}, left by the interrupted retrain {st['run']}")
    if st.get("dataset"):
        shutil.rmtree(st["dataset"], ignore_errors=True)


def _datasets_root(cfg: Config) -> Path:
    return Path(cfg.data_dir).resolve() / "datasets" / "retrain"


def _prune_datasets(cfg: Config, reg: Registry) -> None:
    """Retrain datasets that no generation in the registry names (a failed run's) are deleted; a
    rejected generation's stays while the registry keeps it (it can still be forced to a canary)."""
    root = _datasets_root(cfg)
    if not root.exists():
        return
    keep = set()
    for v in reg.versions(generations.GENERATION):
        ds = reg.manifest(generations.GENERATION, v).get("dataset")
        if ds:
            keep.add(Path(ds).resolve().parent)
    for d in root.iterdir():
        if d.is_dir() and d.resolve() not in keep:
            shutil.rmtree(d, ignore_errors=True)


def split_dataset(cfg: Config, window: Path, out: Path, negative_control: str | None = None, seed: int = 0) -> dict:
    """The window's events before the held-out cutoff as the training dataset `out/train` (with the
    window's catalogue), the newest share as `out/heldout.parquet`. `negative_control` 'shuffled':
    the training set's item ids shuffled over its events as well, in `out/train-shuffled` (the gate's
    self-check: a candidate trained on it must be stopped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recserve.artifacts import DATASET_META, read_events, read_items
    from recserve.offline.data import write_dataset
    from recserve.offline.gate import newest_split
    from recserve.schemas import EVENTS_SCHEMA, ITEMS_SCHEMA, DataError

    events = read_events(window)
    if len(events) < cfg.retrain.min_events:
        raise DataError(
            f"the lake's window holds {len(events)} events, fewer than retrain.min_events "
            f"({cfg.retrain.min_events}): nothing was trained, nothing changed"
        )
    before, after, cutoff = newest_split(events, cfg.retrain.holdout)
    if after.empty:
        raise DataError("every event of the window has one timestamp: no newer slice to judge a candidate on")
    cap = cfg.retrain.max_events_per_user
    if cap is not None:  # each user's newest `cap` events: their recent interests weigh as much as old ones
        before = before.sort_values("ts", kind="stable").groupby("user_id", sort=False).tail(cap).sort_index()
    items = pa.Table.from_pandas(read_items(window), schema=ITEMS_SCHEMA, preserve_index=False)
    meta = {**json.loads((window / DATASET_META).read_text()), "retrain_cutoff_ts": cutoff}
    cols = list(EVENTS_SCHEMA.names)

    def table(df):
        return pa.Table.from_pandas(df[cols], schema=EVENTS_SCHEMA, preserve_index=False)

    write_dataset(table(before), items, out / "train", meta)
    pq.write_table(table(after), out / "heldout.parquet")
    info = {"train": str(out / "train"), "heldout": str(out / "heldout.parquet"), "cutoff_ts": cutoff}
    info.update(train_events=len(before), heldout_events=len(after))
    if negative_control == "shuffled":
        shuffled = before.copy()
        shuffled["item_id"] = np.random.default_rng(seed).permutation(shuffled["item_id"].to_numpy())
        write_dataset(table(shuffled), items, out / "train-shuffled", {**meta, "negative_control": "shuffled"})
        info["train"] = str(out / "train-shuffled")
    elif negative_control is not None:
        raise ValueError(f"--negative-control must be 'shuffled', not {negative_control!r}")
    return info


def judge(
    cfg: Config,
    reg: Registry,
    candidate: dict[str, str],
    serving: dict[str, str] | None,
    history_dataset: str | Path,
    heldout: str | Path,
    log: Progress,
    r=None,
) -> dict:
    """The gate (recserve.offline.gate): both generations on the same held-out slice."""
    import pandas as pd

    from recserve.artifacts import event_weights
    from recserve.offline import gate
    from recserve.offline.jobs.common import train_part
    from recserve.offline.jobs.evaluate import GenerationView
    from recserve.privacy import drop_forgotten, forgotten_for_training
    from recserve.ranking.interactions import build_interactions

    k = 10
    gone = forgotten_for_training(cfg.redis_url)
    train, _, items = train_part(cfg, history_dataset, 0.0, gone)
    test = pd.read_parquet(heldout)
    if gone:
        test = drop_forgotten(test, gone)
    data = build_interactions(train, test, items, event_weights(history_dataset))
    users = data.test_users
    out: dict = {"margin": cfg.retrain.margin, "k": k, "users": int(len(users)), "candidate": candidate}
    out["serving"] = serving
    if serving is None:
        out.update(verdict="first", reasons=[], figures={})
        log("nothing serves yet: the candidate is the first generation")
        return out
    t = time.perf_counter()
    per = {}
    for side, versions in (("candidate", candidate), ("serving", serving)):
        recs = GenerationView(cfg, reg, versions, data, items).ranked(users, k)
        per[side] = gate.per_user(recs, data.test_items, k)
    figures = {m: gate.paired(per["candidate"][m], per["serving"][m]) for m in gate.METRICS}
    ope = None
    if r is not None:
        try:
            from recserve.offline.ope import compare_generations

            ope = compare_generations(cfg, reg, candidate, serving, r, log=log)
        except ValueError as e:  # no logged impressions of these users (yet): judged offline only
            ope = {"skipped": str(e)}
    rc = cfg.retrain
    verdict, reasons, decided = gate.verdict(figures, rc.margin, ope, rc.ope_min_impressions, rc.offline_floor)
    out.update(verdict=verdict, reasons=reasons, decided_by=decided, figures=figures, ope=ope)
    out["seconds"] = round(time.perf_counter() - t, 1)
    for m, f in figures.items():
        log(
            f"{m}: candidate {f['candidate']:.4f} vs serving {f['serving']:.4f} "
            f"(diff {f['diff']:+.4f} [{f['lo']:+.4f}, {f['hi']:+.4f}], {f['relative']:+.1%}) over {f['users']} users"
        )
    log(f"verdict: {verdict}, decided {decided}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return out


def retrain(
    cfg: Config,
    registry: Registry | None = None,
    r=None,
    log: Progress | None = None,
    window_days: float | None = -1.0,
    lake_uri: str | None = None,
    negative_control: str | None = None,
) -> dict:
    """One retrain run (see the module's doc); returns what it made and the verdict."""
    from recserve.offline.jobs.embeddings import train_embeddings
    from recserve.offline.jobs.index import build_index
    from recserve.offline.jobs.lake import lake_dataset
    from recserve.offline.jobs.ranker import train_ranker
    from recserve.redis_client import connect

    log = log or say("retrain")
    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    r = r or connect(cfg.redis_url, timeout=10)
    for name in (*generations.PARTS, generations.GENERATION):
        reg.check_writable(name)
    run = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:4]
    st = RetrainStatus(r, cfg, run)
    st.acquire()
    published: dict[str, str] = {}
    root = _datasets_root(cfg) / run
    window = cfg.retrain.window_days if window_days == -1.0 else window_days
    try:
        _sweep(reg, r, log)
        _prune_datasets(cfg, reg)
        st.stage("export", dataset=str(root))
        serving = generations.serving_versions(reg)
        lake_dataset(cfg, reg, window, out=root / "window", lake_uri=lake_uri, log=log)
        split = split_dataset(cfg, root / "window", root, negative_control)
        shutil.rmtree(root / "window", ignore_errors=True)
        log(
            f"{split['train_events']} events to train on, the newest {split['heldout_events']} held out "
            f"(from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(split['cutoff_ts']))} UTC)"
        )
        creg = Registry(reg.uri, reg.keep, publish_latest=False)  # nothing it publishes serves before promotion
        st.stage("embeddings", published=published)
        published["embeddings"] = train_embeddings(cfg, split["train"], 0.0, creg)
        st.stage("index", published=published)
        published["index"] = build_index(cfg, published["embeddings"], creg)
        st.stage("ranker", published=published)
        published["ranker"] = train_ranker(cfg, split["train"], 0.0, creg, published["embeddings"])
        st.stage("gate", published=published)
        history = str(root / "train")  # the real history, also for a negative control's candidate
        gate = judge(cfg, reg, dict(published), serving, history, split["heldout"], log, r)
        gate["negative_control"] = negative_control
        state = "rejected" if gate["verdict"] == "fail" else "candidate"
        gen = generations.publish(reg, dict(published), gate=gate, dataset=split["train"], run=run, state=state)
        log(f"published generation {gen} ({state})")
        result = {"run": run, "generation": gen, "state": state, "verdict": gate["verdict"], "versions": published}
        st.end("done", generation=gen, verdict=gate["verdict"], published=published)
        return result
    except BaseException as e:
        for name, v in published.items():  # nothing serves them: the registry is as it was
            with contextlib.suppress(Exception):  # best effort: the next run sweeps what is left
                reg.delete_version(name, v)
        shutil.rmtree(root, ignore_errors=True)
        why = f"{type(e).__name__}: {e}" if not isinstance(e, KeyboardInterrupt) else "interrupted"
        st.end("failed", why=f"in stage {st.state.get('stage')!r}: {why}; nothing changed", published={})
        raise
