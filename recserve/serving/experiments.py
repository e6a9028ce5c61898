"""A/B/n experiments on the live path.

An experiment is defined in `recserve.yaml` (`experiments.<name>`: arms with their shares and what
each changes: the ranker version, the bandit's exploration share, the retrieval candidates) and
started with `recserve experiment start <name>`, which checks it against the registry and writes
it to Redis (`exp:active`); every ingress replica reads it from there each second, so starting and
stopping need no redeploy. One experiment runs at a time.

* Assignment: a user (an anonymous visitor: their session) is in the arm whose share interval
  holds hash(unit, experiment) — sticky for the experiment's life, independent between experiments.
* Every answer names its arm (`experiment: {name, arm, served}`), its request id ends in
  `.<experiment>.<arm>` (so feedback finds the arm on any replica) and its impression is logged
  with the arm.
* Figures per arm in Redis (`exp:<name>:stats`, all replicas): answers, items shown, feedback,
  clicks (reward > 0), reward and its square. Reward per shown item (an item without feedback
  counts 0) and CTR with 95 % intervals come from them (`summarize`).
* The guardrail (`guard`): an arm whose mean reward per shown item is below control's at the
  configured one-sided level (a Welch z test, once both have `min_shown` items) is stopped; its
  users are served the control's settings from then on (their answers say `served: control`) and
  count in neither arm; `/v1/status` and `recserve experiment status` say why.

`LiveExperiments` is an ingress replica's view; the module functions are the CLI's."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from statistics import NormalDist

from recserve import keys
from recserve.config import ConfigError, ExperimentConfig

FIGURES = ("answers", "shown", "feedback", "clicks", "reward", "reward_sq")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Arm:
    """A request's arm: the one its unit is assigned to, and the one whose settings serve it
    (control's when the assigned arm was stopped)."""

    experiment: str
    name: str
    served: str
    ranker_version: str | None = None
    ranker_spec: dict | None = None
    bandit_share: float | None = None
    candidates: int | None = None
    generation: str | None = None  # a whole generation serves this arm (a retrain's canary)

    @property
    def stopped(self) -> bool:
        return self.served != self.name

    @property
    def tag(self) -> str:
        return f"{self.experiment}.{self.name}"

    def answer(self) -> dict:
        return {"name": self.experiment, "arm": self.name, "served": self.served}


def bucket(experiment: str, unit: str) -> float:
    """Where a unit falls in [0, 1) for an experiment: a hash, so the same unit gets the same arm on
    every replica and every request, and its arms in two experiments are independent."""
    h = hashlib.blake2b(f"{experiment}\x00{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def arm_name(exp: ExperimentConfig, experiment: str, unit: str) -> str:
    x, acc = bucket(experiment, unit), 0.0
    names = list(exp.arms)
    for name in names:
        acc += exp.arms[name].share
        if x < acc:
            return name
    return names[-1]


def request_arm(request_id: str) -> tuple[str, str] | None:
    """(experiment, arm) from a request id that ends in `.<experiment>.<arm>`, else None."""
    parts = request_id.rsplit(".", 2)
    return (parts[1], parts[2]) if len(parts) == 3 and parts[1] and parts[2] else None


# ------------------------------------------------------------------------------ figures
def wilson(successes: float, n: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + Z95**2 / n
    c = (p + Z95**2 / (2 * n)) / d
    h = Z95 * math.sqrt(max(p * (1 - p) / n + Z95**2 / (4 * n * n), 0.0)) / d
    return max(0.0, c - h), min(1.0, c + h)


def mean_var(s: dict) -> tuple[float, float]:
    """Mean reward per shown item and the variance of that mean (items without feedback count 0)."""
    n = s["shown"]
    if n <= 0:
        return 0.0, math.inf
    m = s["reward"] / n
    var = max(s["reward_sq"] / n - m * m, 0.0)
    return m, var / n


def summarize(raw: dict, exp: ExperimentConfig, stopped: dict[str, dict]) -> dict:
    """Per arm: its settings, sums, reward per shown item and CTR with 95 % intervals, and whether it
    is running (or why it was stopped). `raw`: the stats hash ({"<arm>:<figure>": value})."""
    out = {}
    for name, a in exp.arms.items():
        s = {f: float(raw.get(f"{name}:{f}", 0) or 0) for f in FIGURES}
        m, v = mean_var(s)
        se = math.sqrt(v) if math.isfinite(v) else math.inf
        lo, hi = wilson(s["clicks"], s["shown"])
        out[name] = {
            "share": a.share,
            "control": name == exp.control,
            "settings": {k: val for k, val in a.model_dump().items() if k != "share" and val is not None},
            **{
                f: (int(s[f]) if f in ("answers", "shown", "feedback", "clicks") else round(s[f], 4))
                for f in FIGURES
                if f != "reward_sq"
            },
            "reward_per_item": {
                "estimate": round(m, 5),
                "lo": round(m - Z95 * se, 5) if se < math.inf else None,
                "hi": round(m + Z95 * se, 5) if se < math.inf else None,
            },
            "ctr": {
                "estimate": round(s["clicks"] / s["shown"], 5) if s["shown"] else None,
                "lo": round(lo, 5),
                "hi": round(hi, 5),
            },
            "status": "stopped" if name in stopped else "running",
            **({"stopped": stopped[name]} if name in stopped else {}),
        }
    return out


def guard(raw: dict, exp: ExperimentConfig, stopped: dict[str, dict]) -> dict[str, dict]:
    """The arms the guardrail stops now: {arm: {reason, at, z}} for each running arm whose mean reward
    per shown item is significantly below control's (one-sided Welch z test at guardrail.alpha,
    once both have shown guardrail.min_shown items)."""
    g = exp.guardrail
    if not g.enabled:
        return {}
    figs = {name: {f: float(raw.get(f"{name}:{f}", 0) or 0) for f in FIGURES} for name in exp.arms}
    c = figs[exp.control]
    if c["shown"] < g.min_shown:
        return {}
    mc, vc = mean_var(c)
    z_crit = -NormalDist().inv_cdf(g.alpha)
    out = {}
    for name, s in figs.items():
        if name == exp.control or name in stopped or s["shown"] < g.min_shown:
            continue
        m, v = mean_var(s)
        se = math.sqrt(v + vc)
        if se <= 0:
            continue
        z = (m - mc) / se
        if z < -z_crit:
            out[name] = {
                "reason": f"guardrail: reward per shown item {m:.4f} is below control's {mc:.4f} "
                f"(z = {z:.2f} < -{z_crit:.2f}, one-sided alpha {g.alpha:g}, over {int(s['shown'])} "
                f"and {int(c['shown'])} items); its users are served {exp.control!r}",
                "at": time.time(),
                "z": round(z, 3),
                "by": "guardrail",
            }
    return out


# ------------------------------------------------------------------------ operator's side
def check(name: str, exp: ExperimentConfig, ranker_versions: list[str]) -> None:
    """Raises ConfigError naming the key of an arm whose ranker version the registry does not hold."""
    for arm, a in exp.arms.items():
        if a.ranker_version is not None and a.ranker_version not in ranker_versions:
            have = ", ".join(ranker_versions[-5:]) or "none"
            raise ConfigError(
                f"config key 'experiments.{name}.arms.{arm}.ranker_version': the registry has no "
                f"ranker version {a.ranker_version!r} (its latest: {have}); train one "
                f"(python -m pipelines.train_ranker) or name one it has"
            )


def start(r, cfg, reg, name: str, replace: bool = False) -> dict:
    """Start experiment `name` of the config (checked against the registry) for every ingress
    replica; its figures start from zero. Refuses while another runs unless `replace`."""
    if name not in cfg.experiments:
        have = ", ".join(cfg.experiments) or "none"
        raise ConfigError(f"config key 'experiments.{name}': no such experiment in the config (it defines: {have})")
    exp = cfg.experiments[name]
    check(name, exp, reg.versions("ranker"))
    return begin(r, name, exp, replace)


def begin(r, name: str, exp: ExperimentConfig, replace: bool = False, **extra) -> dict:
    """Write experiment `exp` as the running one (its figures from zero): every replica serves it
    within a second. Refuses while another runs unless `replace`."""
    cur = active(r)
    if cur is not None and cur["name"] != name and not replace:
        raise ConfigError(
            f"experiment {cur['name']!r} is running: stop it first (recserve experiment stop) or pass --replace"
        )
    state = {"name": name, "config": exp.model_dump(mode="json"), "started_at": time.time(), **extra}
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.experiment_stats(name), keys.experiment_stopped(name))
    pipe.set(keys.EXPERIMENT_ACTIVE, json.dumps(state))
    pipe.execute()
    return state


def stop(r, name: str | None = None) -> dict | None:
    """Stop the running experiment (its figures stay readable until it is started again)."""
    cur = active(r)
    if cur is None or (name is not None and cur["name"] != name):
        return None
    r.delete(keys.EXPERIMENT_ACTIVE)
    return cur


def active(r) -> dict | None:
    raw = r.get(keys.EXPERIMENT_ACTIVE)
    return json.loads(raw) if raw else None


def decode(raw: dict) -> dict:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in (raw or {}).items()
    }


def stopped_arms(raw: dict) -> dict[str, dict]:
    return {k: json.loads(v) for k, v in decode(raw).items()}


def report(name: str, started_at: float, exp: ExperimentConfig, raw: dict, stopped: dict[str, dict]) -> dict:
    """A running experiment's figures: what /v1/status, `recserve experiment status` and the metrics show."""
    return {"name": name, "started_at": started_at, "control": exp.control, "arms": summarize(raw, exp, stopped)}


def status(r, name: str | None = None) -> dict | None:
    """The running experiment's figures per arm (or a stopped one's, by name)."""
    cur = active(r)
    if cur is not None and (name is None or cur["name"] == name):
        name, exp = cur["name"], ExperimentConfig.model_validate(cur["config"])
        raw = decode(r.hgetall(keys.experiment_stats(name)))
        stopped = stopped_arms(r.hgetall(keys.experiment_stopped(name)))
        return {"running": True, **report(name, cur["started_at"], exp, raw, stopped)}
    if name is None:
        return None
    return {"name": name, "running": False, "stats": decode(r.hgetall(keys.experiment_stats(name)))}


# ------------------------------------------------------------------------ an ingress replica
class LiveExperiments:
    """An ingress replica's view of the running experiment: refreshed from Redis each second;
    assignment in process; the request path only counts into a dict, `flush` adds the sums to
    Redis (one pipeline); feedback's figures go to Redis with the feedback."""

    def __init__(self, aredis, spec_of=None):
        self.r = aredis
        self.spec_of = spec_of  # ranker version -> its serving spec (model path, quantize...)
        self.name: str | None = None
        self.exp: ExperimentConfig | None = None
        self.started_at = 0.0
        self.stopped: dict[str, dict] = {}
        self.specs: dict[str, dict] = {}
        self.pending: dict[tuple[str, str, str], float] = {}
        self._arms: dict[str, Arm] = {}
        self._key: tuple = (None, None, ())

    @property
    def running(self) -> bool:
        return self.exp is not None

    @staticmethod
    def _state_key(state: dict | None, stopped: dict) -> tuple:
        return (state or {}).get("name"), (state or {}).get("started_at"), tuple(sorted(stopped))

    def specs_for(self, state: dict | None) -> dict[str, dict]:
        """The serving specs of the ranker versions the experiment's arms name (the registry fetches them)."""
        out = {}
        for a in ((state or {}).get("config") or {}).get("arms", {}).values():
            v = a.get("ranker_version")
            if v and self.spec_of is not None:
                out[v] = self.specs.get(v) or self.spec_of(v)
        return out

    def set_state(self, state: dict | None, stopped: dict[str, dict], specs: dict[str, dict] | None = None) -> bool:
        """Apply what Redis holds; True when what is served changed (cached answers must go)."""
        key = self._state_key(state, stopped)
        if key == self._key:
            return False
        self._key = key
        if state is None:
            self.name, self.exp, self.stopped, self._arms, self.specs = None, None, {}, {}, {}
            return True
        exp = ExperimentConfig.model_validate(state["config"])
        self.specs = self.specs_for(state) if specs is None else specs
        arms = {}
        for name in exp.arms:
            served = exp.control if name in stopped else name
            s = exp.arms[served]
            arms[name] = Arm(
                state["name"],
                name,
                served,
                s.ranker_version,
                self.specs.get(s.ranker_version) if s.ranker_version else None,
                s.bandit_share,
                s.candidates,
                s.generation,
            )
        self.name, self.exp, self.started_at, self.stopped, self._arms = (
            state["name"],
            exp,
            state["started_at"],
            stopped,
            arms,
        )
        return True

    async def read(self) -> tuple[dict | None, dict[str, dict]]:
        raw = await self.r.get(keys.EXPERIMENT_ACTIVE)
        state = json.loads(raw) if raw else None
        stopped = stopped_arms(await self.r.hgetall(keys.experiment_stopped(state["name"]))) if state else {}
        return state, stopped

    async def refresh(self) -> bool:
        """Read the experiment from Redis; True when what is served changed."""
        import asyncio

        state, stopped = await self.read()
        if self._state_key(state, stopped) == self._key:
            return False
        specs = await asyncio.to_thread(self.specs_for, state)
        return self.set_state(state, stopped, specs)

    def generations(self) -> set[str]:
        """The generations the running experiment's arms serve (a canary's), stopped arms' left out."""
        return {a.generation for a in self._arms.values() if a.generation and not a.stopped}

    def assign(self, unit: str) -> Arm | None:
        if self.exp is None or self.name is None:
            return None
        return self._arms[arm_name(self.exp, self.name, unit)]

    # ------------------------------------------------------------------ counting
    def count(self, arm: Arm, shown: int) -> None:
        if arm.stopped:
            return  # a stopped arm's users are served control: they count in neither
        for f, v in (("answers", 1), ("shown", shown)):
            k = (arm.experiment, arm.name, f)
            self.pending[k] = self.pending.get(k, 0) + v

    async def flush(self) -> None:
        batch, self.pending = self.pending, {}
        if not batch:
            return
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for (exp, arm, f), v in batch.items():
                    pipe.hincrby(keys.experiment_stats(exp), f"{arm}:{f}", int(v))
                await pipe.execute()
        except Exception:
            for k, v in batch.items():  # Redis away: add them when it is back
                self.pending[k] = self.pending.get(k, 0) + v
            raise

    def feedback_arm(self, request_id: str) -> tuple[str, str] | None:
        """The running experiment's arm that served `request_id`, if any (a stopped arm: None)."""
        got = request_arm(request_id)
        if got is None or self.exp is None or got[0] != self.name or got[1] not in self.exp.arms:
            return None
        return None if got[1] in self.stopped else got

    @staticmethod
    def queue_feedback(pipe, experiment: str, arm: str, reward: float) -> None:
        k = keys.experiment_stats(experiment)
        pipe.hincrby(k, f"{arm}:feedback", 1)
        if reward > 0:
            pipe.hincrby(k, f"{arm}:clicks", 1)
        pipe.hincrbyfloat(k, f"{arm}:reward", reward)
        pipe.hincrbyfloat(k, f"{arm}:reward_sq", reward * reward)

    # ------------------------------------------------------------------ guardrail
    async def guard(self) -> tuple[dict[str, dict], dict | None]:
        """(the arms the guardrail stops now — written once, for every replica — and the figures it
        judged them on, `report`), from one read of the experiment's sums."""
        if self.exp is None or self.name is None:
            return {}, None
        raw = decode(await self.r.hgetall(keys.experiment_stats(self.name)))
        verdicts = guard(raw, self.exp, self.stopped)
        for arm, why in verdicts.items():
            await self.r.hsetnx(keys.experiment_stopped(self.name), arm, json.dumps(why))
        return verdicts, report(self.name, self.started_at, self.exp, raw, self.stopped)

    async def summary(self) -> dict | None:
        if self.exp is None or self.name is None:
            return None
        raw = decode(await self.r.hgetall(keys.experiment_stats(self.name)))
        return report(self.name, self.started_at, self.exp, raw, self.stopped)
