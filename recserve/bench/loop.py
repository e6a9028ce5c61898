"""`recserve bench loop`: the loop proven on a drifting world (benchmarks/loop_world.yaml).

Day 0: a generated world's history is backfilled into a lake, the first retrain trains on it and
serves. Two applications are deployed on the stack's cluster, each on a Redis database and stream
of its own: `loop` (the loop: its events reach the lake, each night it retrains, gates, rolls the
candidate out as a canary the next day and promotes or rolls it back) and `frozen` (the day-0
generation, never retrained, the same real-time path: its stream still folds each user's clicks
into their live context).

Each simulated day:
  morning   the truth moves: every user's interest drifts toward a target category (a new target
            every few days), and new items arrive with content only (PUT /v1/items to both)
  day       the day's users ask both systems through HTTP (/v1/recommend, k items); the truth's
            click model draws their clicks on what each showed them, posted back to the system
            that showed it (POST /v1/events: the click; POST /v1/feedback: the reward)
  night     the loop's lake catches up; `retrain` trains a candidate on it and the gate judges it;
            a passing one starts as a canary for the next day's traffic

Per day: `true_ctr_*`, the mean true click probability of the items shown (no sampling noise) by
the loop, the frozen system, and an oracle showing each request the k items of highest true click
probability in the catalogue; the night's gate verdict, whether a canary was promoted that day,
and the non-2xx answers of the loop's application. Needs the stack up (`recserve up`) and no other
Serve application on the cluster."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

from recserve.bench.common import require_own_serve, write_result

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "benchmarks" / "loop_world.yaml"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class DriftingTruth:
    """What the simulated users truly like, day by day: the generated world's items and its users'
    interests at the end of their history, then each morning a drift toward a target category and
    new items of the world's categories."""

    def __init__(self, world, settings: dict, seed: int):
        from recserve.offline.data import category_name

        self.world = world
        self.rng = np.random.default_rng(seed)
        self.per_day = float(settings["drift"]["per_day"])
        self.every = int(settings["drift"]["new_target_every_days"])
        self.items_per_day = int(settings["arrivals"]["items_per_day"])
        self.item_ids = np.arange(world.cfg.n_items, dtype=np.int64)
        self.item_vecs = world.item_vec.astype(np.float64)
        self.item_cat = world.item_cat.copy()
        ut = world.users_truth(0)
        self.user_ids = ut["user_id"].to_numpy()
        self.user_vecs = np.stack(ut["end_vector"].to_numpy()).astype(np.float64)
        self.row = {int(u): i for i, u in enumerate(self.user_ids)}
        self.targets = self.rng.integers(0, world.cfg.n_categories, size=len(self.user_ids))
        self.category_name = category_name

    def morning(self, day: int) -> list[dict]:
        """Drift every user's interest; the new items of the day (as PUT /v1/items takes them)."""
        C, d = self.world.cfg.n_categories, self.world.cfg.latent_dim
        if day % self.every == 1 or self.every == 1:
            self.targets = self.rng.integers(0, C, size=len(self.user_ids))
        tgt = self.world.centroids[self.targets]
        noise = 0.3 * self.rng.standard_normal(self.user_vecs.shape) / math.sqrt(d)
        self.user_vecs = _unit((1 - self.per_day) * self.user_vecs + self.per_day * _unit(tgt + noise))
        n = self.items_per_day
        # new items mostly of the categories users are moving toward (what a catalogue adds for them)
        cats = np.where(self.rng.random(n) < 0.7, self.rng.choice(self.targets, n), self.rng.integers(0, C, n))
        vecs = _unit(self.world.centroids[cats] + 0.6 * self.rng.standard_normal((n, d)) / math.sqrt(d))
        ids = np.arange(len(self.item_ids), len(self.item_ids) + n, dtype=np.int64) + 1_000_000
        self.item_ids = np.concatenate([self.item_ids, ids])
        self.item_vecs = np.concatenate([self.item_vecs, vecs])
        self.item_cat = np.concatenate([self.item_cat, cats])
        self._row_of_item = None
        return [
            {
                "item_id": int(i),
                "title": f"new {self.category_name(int(c))} item {int(i)}",
                "category": self.category_name(int(c)),
            }
            for i, c in zip(ids, cats)
        ]

    def probabilities(self, user_id: int, item_ids) -> np.ndarray:
        from recserve.offline.data import click_probability

        if getattr(self, "_row_of_item", None) is None:
            self._row_of_item = {int(i): r for r, i in enumerate(self.item_ids)}
        rows = np.array([self._row_of_item.get(int(i), -1) for i in item_ids], dtype=np.int64)
        aff = self.item_vecs[np.maximum(rows, 0)] @ self.user_vecs[self.row[int(user_id)]]
        return np.where(rows >= 0, click_probability(aff), 0.0)

    def oracle(self, user_id: int, k: int) -> float:
        """The mean true click probability of the k best items in the catalogue for this user."""
        from recserve.offline.data import click_probability

        p = click_probability(self.item_vecs @ self.user_vecs[self.row[int(user_id)]])
        return float(np.sort(p)[-k:].mean())


def _configs(cfg, settings: dict, root: Path):
    from recserve.config import RetrainConfig, WorldConfig

    base = cfg.redis_url.rsplit("/", 1)[0]
    tag = uuid.uuid4().hex[:6]
    quotas = {k: q.model_copy(update={"rate": 100_000.0, "burst": 100_000.0}) for k, q in cfg.auth.quotas.items()}
    training = {  # the chain's settings for this run (the night's retrain must fit the night)
        part: getattr(cfg, part).model_copy(update=upd) for part, upd in (settings.get("training") or {}).items()
    }
    common = {
        **training,
        "world": WorldConfig(**{**cfg.world.model_dump(), **settings["world"]}),
        "retrain": RetrainConfig(**{**cfg.retrain.model_dump(), **settings["retrain"]}),
        "auth": cfg.auth.model_copy(update={"quotas": quotas}),
    }
    loop = cfg.model_copy(
        update={
            **common,
            "redis": cfg.redis.model_copy(update={"url": f"{base}/8"}),
            "stream": cfg.stream.model_copy(update={"topic": f"bench-loop-{tag}"}),
            "lake": cfg.lake.model_copy(update={"enabled": True, "uri": str(root / "lake"), "flush_s": 1.0}),
            "registry": cfg.registry.model_copy(update={"uri": str(root / "registry")}),
            "data_dir": root,
        }
    )
    frozen = cfg.model_copy(
        update={
            **common,
            "redis": cfg.redis.model_copy(update={"url": f"{base}/9"}),
            "stream": cfg.stream.model_copy(update={"topic": f"bench-frozen-{tag}"}),
            "lake": cfg.lake.model_copy(update={"enabled": False}),
            "registry": cfg.registry.model_copy(update={"uri": str(root / "registry-frozen")}),
            "data_dir": root,
        }
    )
    return loop, frozen


class _System:
    """One deployed application as the simulated users see it."""

    def __init__(self, name: str, base: str, key: str):
        import httpx

        self.name = name
        self.http = httpx.Client(
            base_url=f"{base}/{name}", timeout=30, headers={"authorization": f"Bearer {key}"}, http2=False
        )
        self.non_2xx = 0
        self.p_sum = 0.0
        self.answers = 0
        self.levels: dict[int, int] = {}

    def post(self, path: str, body: dict):
        got = self.http.post(path, json=body)
        if got.status_code >= 300:
            self.non_2xx += 1
        return got

    def day_reset(self) -> None:
        self.non_2xx, self.p_sum, self.answers, self.levels = 0, 0.0, 0, {}


def _wait_lake(cfg, log, timeout_s: float = 120.0) -> dict:
    from recserve.lake import Lake, status
    from recserve.redis_client import connect
    from recserve.streaming.eventlog import make_log

    r = connect(cfg.redis_url, timeout=10)
    elog = make_log(cfg, r)
    deadline = time.monotonic() + timeout_s
    st = {}
    try:
        while time.monotonic() < deadline:
            st = status(Lake(cfg.lake_uri), elog, r)
            if st.get("sink_lag", {}).get("events", 1) == 0:
                break
            time.sleep(1.0)
    finally:
        elog.close()
    return st


def run(cfg, days: int, out: str | Path | None, log=print, settings_path: str | Path = SETTINGS) -> dict:
    from ray import serve

    from deployments.app import build_app
    from recserve import generations, rollout
    from recserve.auth import KeyStore
    from recserve.lake import Lake, backfill
    from recserve.offline.data import World, generate_world
    from recserve.offline.jobs.retrain import retrain
    from recserve.ops.procs import free_port
    from recserve.ops.ray_head import ensure_ray
    from recserve.redis_client import connect
    from recserve.registry import Registry

    t_start = time.time()
    settings = yaml.safe_load(Path(settings_path).read_text())
    ensure_ray(cfg)
    require_own_serve("bench loop")
    root = Path(cfg.data_dir).resolve() / "bench-loop" / time.strftime("%Y%m%dT%H%M%S")
    root.mkdir(parents=True)
    loop_cfg, frozen_cfg = _configs(cfg, settings, root)
    r_loop, r_frozen = connect(loop_cfg.redis_url, timeout=10), connect(frozen_cfg.redis_url, timeout=10)
    r_loop.flushdb()
    r_frozen.flushdb()
    log(f"day 0: the history ({loop_cfg.world.n_users} users, {loop_cfg.world.n_items} items) into the lake")
    generate_world(loop_cfg.world, root / "world", use_ray=False)
    backfill(Lake(loop_cfg.lake_uri), root / "world")
    reg = Registry(loop_cfg.registry_uri, loop_cfg.registry.keep)
    t0 = time.perf_counter()
    first = retrain(loop_cfg, reg, r=r_loop, log=lambda m: log(f"  {m}"))
    rollout.roll_out(loop_cfg, reg, r_loop, first["generation"])
    retrain_s = [round(time.perf_counter() - t0, 1)]
    shutil.copytree(root / "registry", root / "registry-frozen")  # the day-0 generation, kept as it is
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    systems = {}
    try:
        for name, c in (("loop", loop_cfg), ("frozen", frozen_cfg)):
            serve.run(
                build_app(c, c.registry_uri, str(root / f"index-live-{name}"), name=f"bench-{name}"),
                name=f"bench-{name}",
                route_prefix=f"/{name}",
            )
            key = KeyStore(connect(c.redis_url, timeout=10)).create(f"bench-loop-{name}", "admin")[1]
            systems[name] = _System(name, base, key)
        truth = DriftingTruth(World(loop_cfg.world), settings, seed=int(settings["traffic"]["seed"]))
        rng = np.random.default_rng(int(settings["traffic"]["seed"]) + 1)
        tr = settings["traffic"]
        k = int(tr["k"])
        entries = []
        for day in range(1, days + 1):
            new_items = truth.morning(day)
            for s in systems.values():
                for b in range(0, len(new_items), 100):
                    s.post("/v1/items", {"items": new_items[b : b + 100]})
                s.day_reset()
            before = rollout.state(r_loop) or {}
            users = rng.choice(truth.user_ids, size=int(tr["users_per_day"]), replace=False)
            oracle_sum, asks = 0.0, 0
            t_day = time.perf_counter()
            for _ in range(int(tr["requests_per_user"])):
                for u in users.tolist():
                    oracle_sum += truth.oracle(u, k)
                    asks += 1
                    for s in systems.values():
                        got = s.post("/v1/recommend", {"user_id": u, "k": k})
                        if got.status_code != 200:
                            continue
                        ans = got.json()
                        items = [i["item_id"] for i in ans["items"]]
                        p = truth.probabilities(u, items)
                        s.p_sum += float(p.mean()) if len(p) else 0.0
                        s.answers += 1
                        s.levels[ans["degradation_level"]] = s.levels.get(ans["degradation_level"], 0) + 1
                        clicked = [i for i, pi in zip(items, p) if rng.random() < pi]
                        if clicked:
                            s.post(
                                "/v1/events",
                                {"events": [{"user_id": u, "item_id": i, "event_type": "click"} for i in clicked]},
                            )
                            for i in clicked:
                                s.post("/v1/feedback", {"request_id": ans["request_id"], "item_id": i, "reward": 1.0})
            day_s = time.perf_counter() - t_day
            after = rollout.state(r_loop) or {}
            promoted = (
                before.get("state") == "canary"
                and after.get("state") == "promoted"
                and after.get("generation") == before.get("generation")
            )
            rolled_back = before.get("state") == "canary" and after.get("state") == "rolled_back"
            lake = _wait_lake(loop_cfg, log)
            t0 = time.perf_counter()
            try:
                res = retrain(loop_cfg, reg, r=r_loop, log=lambda m: log(f"  {m}"))
                gate = res["verdict"]
                if res["state"] == "candidate":
                    cur = rollout.state(r_loop) or {}
                    if cur.get("state") == "canary":  # yesterday's is still undecided: it gives way
                        rollout.rollback(loop_cfg, reg, r_loop, "replaced by a newer candidate")
                    rollout.roll_out(loop_cfg, reg, r_loop, res["generation"])
            except Exception as e:  # noqa: BLE001 - a failed night is a figure too: nothing changed
                gate, res = f"error: {type(e).__name__}: {e}", {}
            retrain_s.append(round(time.perf_counter() - t0, 1))
            lo, fr = systems["loop"], systems["frozen"]
            entry = {
                "day": day,
                "true_ctr_loop": round(lo.p_sum / max(lo.answers, 1), 5),
                "true_ctr_frozen": round(fr.p_sum / max(fr.answers, 1), 5),
                "true_ctr_oracle": round(oracle_sum / max(asks, 1), 5),
                "gate": gate,
                "promoted": promoted,
                "rolled_back": rolled_back,
                "rollout_non_2xx": lo.non_2xx,
                "frozen_non_2xx": fr.non_2xx,
                "answers": {"loop": lo.answers, "frozen": fr.answers},
                "levels": {"loop": lo.levels, "frozen": fr.levels},
                "serving_generation": generations.serving_generation(reg),
                "candidate": res.get("generation"),
                "gate_figures": (reg.manifest("generation", res["generation"]).get("gate") or {}).get("figures")
                if res.get("generation")
                else None,
                "new_items": len(new_items),
                "lake_rows": lake.get("rows"),
                "traffic_s": round(day_s, 1),
                "retrain_s": retrain_s[-1],
            }
            entries.append(entry)
            log(
                f"day {day}: true CTR loop {entry['true_ctr_loop']:.4f}, frozen {entry['true_ctr_frozen']:.4f}, "
                f"oracle {entry['true_ctr_oracle']:.4f}; gate {gate}; promoted {promoted}; "
                f"non-2xx {lo.non_2xx}"
            )
            write_result(out, _result(entries, settings, settings_path, retrain_s, t_start, days))
        res = _result(entries, settings, settings_path, retrain_s, t_start, days)
        write_result(out, res)
        if out:
            plot(res, Path(out).with_suffix(".png"))
        return res
    finally:
        for name in ("bench-loop", "bench-frozen"):
            with contextlib.suppress(Exception):  # best effort on the way out
                serve.delete(name)


def _result(entries: list[dict], settings: dict, settings_path, retrain_s, t_start: float, days: int) -> dict:
    last, first = (entries[-1], entries[0]) if entries else ({}, {})
    out = {
        "bench": "loop",
        "settings_file": str(Path(settings_path).resolve().relative_to(ROOT))
        if str(Path(settings_path).resolve()).startswith(str(ROOT))
        else str(settings_path),
        "settings": settings,
        "days_requested": days,
        "days": entries,
        "retrain_seconds": retrain_s,
        "seconds": round(time.time() - t_start, 1),
    }
    if entries:
        ratio = last["true_ctr_loop"] / last["true_ctr_frozen"] if last["true_ctr_frozen"] else None
        gap1 = first["true_ctr_oracle"] - first["true_ctr_loop"]
        gap_last = last["true_ctr_oracle"] - last["true_ctr_loop"]
        out["targets"] = {
            "last_day_loop_vs_frozen": round(ratio, 4) if ratio is not None else None,
            "loop_ge_1_10x_frozen_on_last_day": bool(ratio is not None and ratio >= 1.10),
            "oracle_gap_day1": round(gap1, 5),
            "oracle_gap_last_day": round(gap_last, 5),
            "oracle_gap_smaller_on_last_day": bool(gap_last < gap1),
            "non_2xx_total": int(sum(e["rollout_non_2xx"] for e in entries)),
        }
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = [e["day"] for e in res["days"]]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, label, style in (
        ("true_ctr_oracle", "oracle (true top-k)", "k--"),
        ("true_ctr_loop", "the loop", "o-"),
        ("true_ctr_frozen", "frozen day-0 generation", "s-"),
    ):
        ax.plot(d, [e[key] for e in res["days"]], style, label=label)
    for e in res["days"]:
        if e["promoted"]:
            ax.axvline(e["day"], color="#88bb88", lw=0.8, zorder=0)
    ax.set_xlabel("simulated day (green: a canary promoted that day)")
    ax.set_ylabel("true CTR of the items shown")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("recserve bench loop: a drifting world")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(res: dict) -> str:
    return json.dumps(res.get("targets", {}))
