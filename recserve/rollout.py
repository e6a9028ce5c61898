"""A candidate generation's rollout: a canary, then promotion or rollback (`recserve rollout`).

A candidate that passed the gate starts as an experiment (recserve.serving.experiments) named
`canary-<generation>` with two arms: `control` (the serving generation) and `canary`, which serves
the candidate's whole generation (embeddings, index, ranker, sequence model; every ingress replica
loads it beside its own) to `retrain.canary_share` of users. The experiment's guardrail watches
reward per shown item against control (one-sided at `retrain.canary_alpha`).

`tick`, run every few seconds by one ingress replica at a time, decides:
  * the guardrail stopped the canary arm: roll back — the generation is marked `rolled_back`, the
    experiment ends, its users are served the serving generation (they already are from the
    moment the arm stops);
  * the canary showed `retrain.canary_min_shown` items and is not stopped: promote — the
    generation's pointers move (recserve.generations.promote), the experiment ends, and every
    replica makes the canary it holds its serving generation in place (the old index's actors
    stopped, the cached answers dropped).

The state is rollout:state in Redis: {state: canary | promoted | rolled_back, generation,
experiment, since, why, registry}. `registry` names the registry whose generation it is: an
application on the same Redis that serves another registry (a second application, a test's own)
does not act on it — it would find a generation of that name in its own registry, or none."""

from __future__ import annotations

import json
import time

from recserve import generations, keys
from recserve.config import ArmConfig, ConfigError, ExperimentConfig, GuardrailConfig

CANARY_ARM = "canary"


def experiment_name(generation: str) -> str:
    return f"canary-{generation}"


def canary_experiment(cfg, generation: str) -> ExperimentConfig:
    rc = cfg.retrain
    return ExperimentConfig(
        control="control",
        arms={
            "control": ArmConfig(share=1.0 - rc.canary_share),
            CANARY_ARM: ArmConfig(share=rc.canary_share, generation=generation),
        },
        # the guardrail judges from half the items the canary needs to be promoted
        guardrail=GuardrailConfig(min_shown=max(10, rc.canary_min_shown // 2), alpha=rc.canary_alpha),
    )


def registry_id(reg) -> str:
    """The registry a rollout state belongs to, the same however its URI was spelled."""
    return f"{reg.fs.type_name}:{reg.root}"


def concerns(st: dict | None, registry: str) -> bool:
    """Whether rollout state `st` is of the registry `registry` (registry_id); a state written
    before states named their registry concerns every one."""
    return bool(st) and st.get("registry") in (None, registry)


def state(r, reg=None) -> dict | None:
    """The rollout's state; with `reg`, only when it is that registry's rollout (else None)."""
    raw = r.get(keys.ROLLOUT_STATE)
    st = json.loads(raw) if raw else None
    if st is not None and reg is not None and not concerns(st, registry_id(reg)):
        return None
    return st


def _set(r, reg, **st) -> dict:
    st = {**st, "registry": registry_id(reg), "since": time.time()}
    r.set(keys.ROLLOUT_STATE, json.dumps(st, default=str))
    return st


def start_canary(cfg, reg, r, generation: str, force: bool = False) -> dict:
    """Start generation `generation` as a canary. Refused for a rejected one unless `force` (an
    operator's test of the guardrail), and while another experiment runs."""
    from recserve.serving import experiments

    note = reg.note(generations.GENERATION, reg.resolve(generations.GENERATION, generation))
    st = note.get("state")
    if st == "rejected" and not force:
        raise ConfigError(
            f"generation {generation} was rejected by the gate ({note.get('why')}); "
            f"`recserve rollout start {generation} --force` rolls it out anyway"
        )
    if st in ("serving", "retired"):
        raise ConfigError(f"generation {generation} has served already ({st}): nothing to roll out")
    cur = state(r)
    if cur and cur.get("state") == "canary" and not concerns(cur, registry_id(reg)):
        # one running experiment per Redis database: a canary of another registry's holds it
        raise ConfigError(
            f"a canary of another registry ({cur.get('registry')}: generation {cur.get('generation')}) "
            f"runs on this Redis database; its application promotes or rolls it back first, or give "
            f"this registry a Redis database of its own (redis.url)"
        )
    if cur and cur.get("state") == "canary" and cur.get("generation") != generation:
        raise ConfigError(
            f"generation {cur['generation']} is a canary now: promote or roll it back first (recserve rollout)"
        )
    name = experiment_name(generation)
    experiments.begin(r, name, canary_experiment(cfg, generation), rollout=generation)
    generations.mark(reg, generation, "canary", "forced past the gate" if st == "rejected" else None)
    return _set(r, reg, state="canary", generation=generation, experiment=name, forced=st == "rejected")


def roll_out(cfg, reg, r, generation: str) -> dict:
    """What follows a candidate that passed the gate: a canary; or, when nothing serves yet (the
    gate's verdict `first`: no control to compare with), promotion at once."""
    gate = reg.manifest(generations.GENERATION, generation).get("gate") or {}
    if gate.get("verdict") == "first":
        generations.promote(reg, generation)
        return _set(r, reg, state="promoted", generation=generation, experiment=None, why="the first generation")
    return start_canary(cfg, reg, r, generation)


def promote(cfg, reg, r, why: str = "by an operator") -> dict:
    cur = state(r, reg)
    if not cur or cur.get("state") != "canary":
        raise ConfigError("no canary is running: nothing to promote (recserve rollout status)")
    from recserve.serving import experiments

    generations.promote(reg, cur["generation"])
    # the state first, then the experiment's end: a replica that sees the experiment gone already
    # knows its canary is to become the serving generation (it adopts it rather than releasing it)
    out = _set(r, reg, state="promoted", generation=cur["generation"], experiment=cur["experiment"], why=why)
    experiments.stop(r, cur["experiment"])
    return out


def rollback(cfg, reg, r, why: str = "by an operator") -> dict:
    cur = state(r, reg)
    if not cur or cur.get("state") != "canary":
        raise ConfigError("no canary is running: nothing to roll back (recserve rollout status)")
    from recserve.serving import experiments

    experiments.stop(r, cur["experiment"])
    generations.mark(reg, cur["generation"], "rolled_back", why)
    return _set(r, reg, state="rolled_back", generation=cur["generation"], experiment=cur["experiment"], why=why)


def tick(cfg, reg, r) -> dict | None:
    """The canary's decision now (None: nothing to do). One caller at a time (a lock in Redis)."""
    from recserve.serving import experiments

    cur = state(r, reg)
    if not cur or cur.get("state") != "canary":
        return None
    if not r.set(keys.ROLLOUT_STATE + ":tick", "1", nx=True, px=2000):
        return None
    active = experiments.active(r)
    if active is None or active.get("name") != cur["experiment"]:
        return rollback(cfg, reg, r, "its experiment was stopped or replaced")
    stopped = experiments.stopped_arms(r.hgetall(keys.experiment_stopped(cur["experiment"])))
    if CANARY_ARM in stopped:
        return rollback(cfg, reg, r, stopped[CANARY_ARM].get("reason", "stopped"))
    raw = experiments.decode(r.hgetall(keys.experiment_stats(cur["experiment"])))
    shown = float(raw.get(f"{CANARY_ARM}:shown", 0) or 0)
    if shown >= cfg.retrain.canary_min_shown:
        return promote(cfg, reg, r, f"the canary showed {int(shown)} items and its guardrail did not stop it")
    return None


def status(cfg, reg, r) -> dict:
    """The rollout's state, its experiment's figures per arm, and the generations."""
    from recserve.serving import experiments

    cur = state(r, reg)
    exp = experiments.status(r, cur["experiment"]) if cur else None
    return {
        "rollout": cur,
        "experiment": exp,
        "serving": generations.serving_generation(reg),
        "generations": generations.table(reg)[:10],
    }
