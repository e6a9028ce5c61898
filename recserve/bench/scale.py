"""`recserve bench scale`: serving state that does not grow with history, on worlds of 100 k and 1 M
users (items a tenth of the users, 15 events per user, as `world_1m`).

For each world, in one run on the stack's cluster:
  world       generated (reused when the directory holds it), its seconds
  generation  the world's latent truth vectors as the embeddings: NOT trained — the offline chain
              cannot train the million-user world on this 2-core machine yet (the issue after this
              one scales training out); the ranker is an untrained network of the served
              architecture (its cost per answer is a trained one's). What is measured is what
              serving holds and costs, not the answers' quality.
  serving state  recserve.featurestore.write_serving_state over the world's events (seconds)
  feature store  the users written into Redis (seconds, Redis memory per million users, from
              INFO memory before and after)
  index       built from the item vectors (recserve.offline.jobs.index)
  router      the Ingress deployment (the ranker in process): seconds from deploy to its first
              answer, its replica's RSS after start and after the load
  load        POST /v1/recommend at c=4 from the raw-socket load generator (a disjoint user range
              per run, median of three) against the same run's no-op on the same ingress

Needs the stack up (`recserve up`) and no other Serve application on the cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from recserve.bench.common import require_own_serve, write_result

EVENTS_PER_USER = 15
DURATION_S = 15.0


def _world_cfg(n_users: int):
    from recserve.config import WorldConfig

    return WorldConfig(
        seed=17,
        n_users=n_users,
        n_items=max(1000, n_users // 10),
        events_per_user=EVENTS_PER_USER,
        users_per_block=min(50_000, max(1000, n_users // 20)),
    )


def _redis_bytes(r) -> int:
    return int(r.info("memory")["used_memory"])


def _router_rss_mb(app: str) -> float | None:
    """The RSS of the application's Ingress replica process (its name holds the app's)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if f"ServeReplica:{app}:Ingress" in cmd:
                return round(p.memory_info().rss / 2**20, 1)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def publish_truth_generation(cfg, reg, world_dir: Path, log) -> dict:
    """Embeddings from the world's latent truth, their serving state, an index and an untrained
    ranker, published to `reg`; the seconds of each step."""
    import torch

    from recserve.artifacts import read_events, read_items, save_embeddings
    from recserve.featurestore import write_serving_state
    from recserve.offline.data import Truth
    from recserve.offline.jobs.common import lineage
    from recserve.offline.jobs.index import build_index
    from recserve.ranking.features import FEATURE_NAMES
    from recserve.ranking.ranker import RankerNet, save_model

    out: dict = {}
    t = time.perf_counter()
    events, items = read_events(world_dir), read_items(world_dir)
    truth = Truth(world_dir)
    user_ids = np.unique(events["user_id"].to_numpy(np.int64))
    item_ids = np.unique(np.concatenate([items["item_id"].to_numpy(np.int64), events["item_id"].to_numpy(np.int64)]))
    urow = np.searchsorted(truth.user_ids, user_ids)
    irow = np.searchsorted(truth.item_ids, item_ids)
    uv = np.hstack([truth.user_vectors[urow], np.ones((len(user_ids), 1), np.float32)]).astype(np.float32)
    iv = np.hstack([truth.item_vectors[irow], np.zeros((len(item_ids), 1), np.float32)]).astype(np.float32)
    out["events"] = int(len(events))
    out["read_s"] = round(time.perf_counter() - t, 1)
    log(f"  {len(events)} events, {len(user_ids)} users, {len(item_ids)} items read ({out['read_s']} s)")
    with tempfile.TemporaryDirectory() as tmp:
        save_embeddings(tmp, user_ids=user_ids, item_ids=item_ids, user_vectors=uv, item_vectors=iv)
        t = time.perf_counter()
        write_serving_state(tmp, cfg, events, items, user_ids, item_ids, uv, iv)
        out["serving_state_s"] = round(time.perf_counter() - t, 1)
        log(f"  serving state (users/ and serving/) written in {out['serving_state_s']} s")
        del events
        emb = reg.publish(
            "embeddings",
            tmp,
            metrics={"n_users": len(user_ids), "n_items": len(item_ids)},
            lineage=lineage(world_dir, 0.0),
            extra={"dim": int(iv.shape[1]), "sequence": None, "trained": False, "source": "the world's latent truth"},
        )
    t = time.perf_counter()
    build_index(cfg, emb, registry=reg, log=lambda m: log(f"  {m}"))
    out["index_s"] = round(time.perf_counter() - t, 1)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = RankerNet(len(FEATURE_NAMES), cfg.ranker.hidden)
        save_model(model, Path(tmp) / "ranker.pt", {"trained": False})
        reg.publish("ranker", tmp, lineage={"embeddings": emb}, extra={"trained": False})
    out["embeddings"] = emb
    return out


def run(cfg, users: list[int], out: str | Path | None, duration: float = DURATION_S, log=print) -> dict:
    from ray import serve

    from deployments.app import build_app
    from deployments.noop import Noop
    from recserve.auth import KeyStore
    from recserve.bench.serving import _median_point, _settle, _wait_ready
    from recserve.featurestore import publish_version
    from recserve.offline.data import generate_world
    from recserve.ops.procs import free_port
    from recserve.ops.ray_head import ensure_ray
    from recserve.redis_client import connect
    from recserve.registry import Registry

    t_start = time.time()
    ensure_ray(cfg)
    require_own_serve("bench scale")
    root = Path(cfg.data_dir).resolve() / "bench-scale"
    root.mkdir(parents=True, exist_ok=True)
    r = connect(cfg.redis_url, timeout=None)
    kid, key = KeyStore(r).create("bench scale", "recommend", {"recommend": {"rate": 1e6, "burst": 1e6}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    res: dict = {
        "bench": "scale",
        "cpus": os.cpu_count(),
        "duration_s": duration,
        "deadline_ms": cfg.serve.deadline_ms,
        "user_states_lru": cfg.serve.user_states,
        "generation": (
            "the world's latent truth vectors as the embeddings and an untrained ranker of the served "
            "architecture: not trained (the offline chain cannot train the million-user world on this "
            "machine yet); serving's state and cost are measured, not the answers' quality"
        ),
        "worlds": {},
    }
    try:
        for n in users:
            w = _world_cfg(n)
            wdir = root / f"world-{n}"
            entry: dict = {"users": n, "items": w.n_items, "events_per_user": EVENTS_PER_USER}
            if not (wdir / "meta.json").exists():
                t = time.perf_counter()
                log(f"world of {n} users, {w.n_items} items: generating")
                generate_world(w, wdir, use_ray=True)
                entry["world_s"] = round(time.perf_counter() - t, 1)
            else:
                log(f"world of {n} users: reusing {wdir}")
            reg_dir = root / f"registry-{n}"
            shutil.rmtree(reg_dir, ignore_errors=True)
            reg = Registry(reg_dir, cfg.registry.keep)
            wcfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"uri": str(reg_dir)})})
            entry.update(publish_truth_generation(wcfg, reg, wdir, log))
            before = _redis_bytes(r)
            t = time.perf_counter()
            fs = publish_version(wcfg, reg, entry["embeddings"], log=lambda m: log(f"  {m}"))
            if fs is None:
                raise RuntimeError("the feature store did not take the users (is the stack's Redis up?)")
            entry["feature_store_s"] = round(time.perf_counter() - t, 1)
            grown = _redis_bytes(r) - before
            entry["redis_bytes_per_user"] = round(grown / max(fs["users"], 1), 1)
            entry["redis_mb_per_million_users"] = round(grown / max(fs["users"], 1) * 1e6 / 2**20, 1)
            entry["state_bytes_per_user"] = round(fs["bytes"] / max(fs["users"], 1), 1)
            log(
                f"  feature store: {fs['users']} users in {entry['feature_store_s']} s, "
                f"{entry['redis_mb_per_million_users']} MB of Redis per million users"
            )
            # the no-op on the same ingress, at the same time
            serve.run(Noop.bind(), name="noop", route_prefix="/noop")
            _wait_ready(f"{base}/noop/", {"user_id": 1, "k": 10}, key=key)
            _settle(log)
            user_range = np.arange(n, dtype=np.int64)
            noop = _median_point(f"{base}/noop/", 4, duration, user_range, 11, 3, key=key)
            serve.delete("noop")
            app = f"scale-{n}"
            t = time.perf_counter()
            serve.run(
                build_app(wcfg, wcfg.registry_uri, str(root / f"index-live-{n}"), cache=False, name=app),
                name=app,
                route_prefix=f"/{app}",
            )
            first = _wait_ready(f"{base}/{app}/v1/recommend", {"user_id": 1, "k": 10}, timeout=600, key=key)
            entry["router_start_s"] = round(time.perf_counter() - t, 1)
            entry["router_rss_mb_started"] = _router_rss_mb(app)
            entry["first_answer_level"] = first["degradation_level"]
            _settle(log)
            rec = _median_point(f"{base}/{app}/v1/recommend", 4, duration, user_range, 23, 3, key=key)
            entry["router_rss_mb"] = _router_rss_mb(app)  # after the load: its LRU of recent users filled
            entry["recommend"] = rec
            entry["noop"] = noop
            entry["recommend_vs_noop"] = round(rec["rps"] / noop["rps"], 4) if noop["rps"] else None
            serve.delete(app)
            log(
                f"  router: answering {entry['router_start_s']} s after deploy, RSS {entry['router_rss_mb_started']} MB "
                f"started, {entry['router_rss_mb']} MB after the load; recommend {rec['rps']:.0f} req/s "
                f"(p95 {rec['p95_ms']:.1f} ms, levels {rec.get('levels')}) vs noop {noop['rps']:.0f}: "
                f"{entry['recommend_vs_noop']}"
            )
            res["worlds"][str(n)] = entry
            from recserve.featurestore import drop_users, serving_fid

            fid = serving_fid(reg.fetch("embeddings", entry["embeddings"]))
            if fid:
                drop_users(r, fid)  # the next world's Redis figure starts from the same base
            write_result(out, _targets(res))
        res["seconds"] = round(time.time() - t_start, 1)
        res = _targets(res)
        write_result(out, res)
        return res
    finally:
        KeyStore(r).revoke(kid)
        with contextlib.suppress(Exception):  # best effort on the way out
            serve.shutdown()


def _targets(res: dict) -> dict:
    w = res["worlds"]
    small, big = w.get("100000"), w.get("1000000")
    t: dict = {}
    for name, e in w.items():
        t[f"router_start_le_30s_{name}"] = bool(e.get("router_start_s") is not None and e["router_start_s"] <= 30)
        t[f"redis_le_1gib_per_million_users_{name}"] = bool(e.get("redis_mb_per_million_users", 1e9) <= 1024)
    if small and big and small.get("router_rss_mb") and big.get("router_rss_mb"):
        t["rss_1m_vs_100k"] = round(big["router_rss_mb"] / small["router_rss_mb"], 3)
        t["rss_1m_le_1_2x_100k"] = t["rss_1m_vs_100k"] <= 1.2
        if small.get("recommend_vs_noop") and big.get("recommend_vs_noop"):
            t["recommend_vs_noop_1m_vs_100k"] = round(big["recommend_vs_noop"] / small["recommend_vs_noop"], 3)
            t["recommend_vs_noop_1m_ge_0_9x_100k"] = t["recommend_vs_noop_1m_vs_100k"] >= 0.9
    return {**res, "targets": t}


def summary(res: dict) -> str:
    return json.dumps(res.get("targets", {}))
