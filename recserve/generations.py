"""Generations: the set of versions (embeddings with their sequence model, index, ranker) that
serves together, and their life in the loop (recserve.offline.jobs.retrain).

A retrain publishes its candidate's artifacts without moving their `latest` pointers, then one
version of the registry artifact `generation` that names them, with the gate's verdict and
figures in its manifest. Its state lives in the version's note (`Registry.write_note`):

  candidate    passed the gate, not rolled out yet
  rejected     the gate kept it (worse beyond retrain.margin); never served
  canary       served to retrain.canary_share of users as an experiment arm
  rolled_back  its canary was stopped (by the guardrail or an operator); its users went back
  serving      promoted: the `latest` of generation and of each of its artifacts point at it
  retired      served once, replaced by a later one

What serves is, per artifact, whichever pointer moved last: the generation's or the artifact's own
(`serving_versions`). Promotion moves the generation's pointer first, then the artifacts', so a
replica that reads the registry in between still loads one consistent generation, and a version
published by hand with the plain chain (which moves its artifact's pointer) is served as before."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

GENERATION = "generation"
PARTS = ("embeddings", "index", "ranker")
STATES = ("candidate", "rejected", "canary", "rolled_back", "serving", "retired")


def serving_versions(reg) -> dict[str, str] | None:
    """The versions serving loads: {embeddings, index, ranker} (None: nothing trained yet)."""
    gen = reg.pointer(GENERATION)
    gen_parts = reg.manifest(GENERATION, gen["version"])["versions"] if gen else {}
    out = {}
    for name in PARTS:
        own = reg.pointer(name)
        if gen and name in gen_parts and (own is None or float(gen.get("at", 0)) >= float(own.get("at", 0))):
            out[name] = gen_parts[name]
        elif own is not None:
            out[name] = own["version"]
        else:
            return None
    return out


def serving_generation(reg) -> str | None:
    """The generation version that serves, when what serves is one (not versions published by hand)."""
    gen = reg.latest(GENERATION)
    if gen is None:
        return None
    return gen if reg.manifest(GENERATION, gen)["versions"] == serving_versions(reg) else None


def publish(reg, versions: dict[str, str], *, gate: dict, dataset: str, run: str, state: str) -> str:
    """A generation version naming `versions`, with the gate's verdict and figures; `latest` stays."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "gate.json").write_text(json.dumps(gate, indent=2, default=str))
        v = reg.publish(
            GENERATION,
            tmp,
            metrics={"verdict": gate.get("verdict")},
            lineage={**versions, "dataset": dataset},
            extra={"versions": dict(versions), "gate": gate, "run": run, "dataset": dataset},
            set_latest=False,
        )
    mark(reg, v, state, gate.get("reasons") and "; ".join(gate["reasons"]) or None)
    return v


def mark(reg, version: str, state: str, why: str | None = None) -> None:
    if state not in STATES:
        raise ValueError(f"generation state {state!r} is not one of {', '.join(STATES)}")
    note = reg.note(GENERATION, version)
    history = [*note.get("history", []), {"state": state, "at": time.time(), **({"why": why} if why else {})}]
    reg.write_note(GENERATION, version, {"state": state, "why": why, "at": time.time(), "history": history})


def promote(reg, version: str) -> dict[str, str]:
    """Make generation `version` the one that serves: its pointer first, then its artifacts'."""
    versions = reg.manifest(GENERATION, version)["versions"]
    before = serving_generation(reg)
    for name, v in versions.items():
        reg.resolve(name, v)  # every part still in the registry
    reg.set_latest(GENERATION, version)
    for name in PARTS:
        if name in versions:
            reg.set_latest(name, versions[name])
    mark(reg, version, "serving")
    if before and before != version:
        mark(reg, before, "retired", f"replaced by {version}")
    return versions


def adopt(reg, run: str = "serving") -> str:
    """The versions serving now as a generation of their own (the first retrain's 'serving' side,
    when the serving versions were trained by hand): its gate says it was not judged."""
    current = serving_versions(reg)
    if current is None:
        raise ValueError("nothing serves yet: there is no generation to adopt")
    gen = serving_generation(reg)
    if gen is not None:
        return gen
    v = publish(reg, current, gate={"verdict": "adopted"}, dataset="", run=run, state="serving")
    reg.set_latest(GENERATION, v)
    for name in PARTS:  # its pointer moved last: re-point the parts, which are the same versions
        reg.set_latest(name, current[name])
    return v


def protected(reg) -> dict[str, set[str]]:
    """Versions of each part that a generation still needs (not rejected nor rolled back): kept by prune."""
    keep: dict[str, set[str]] = {p: set() for p in PARTS}
    for v in reg.versions(GENERATION):
        if reg.note(GENERATION, v).get("state") in ("candidate", "canary", "serving"):
            for name, pv in reg.manifest(GENERATION, v)["versions"].items():
                keep.setdefault(name, set()).add(pv)
    return keep


def table(reg) -> list[dict]:
    """Every generation, newest first: versions, the gate's verdict and figures, state."""
    out = []
    for v in reversed(reg.versions(GENERATION)):
        man, note = reg.manifest(GENERATION, v), reg.note(GENERATION, v)
        gate = man.get("gate") or {}
        out.append(
            {
                "generation": v,
                "created_at": man.get("created_at"),
                "versions": man.get("versions", {}),
                "state": note.get("state"),
                "why": note.get("why"),
                "verdict": gate.get("verdict"),
                "decided_by": gate.get("decided_by"),
                "margin": gate.get("margin"),
                "figures": gate.get("figures", {}),
                "ope": gate.get("ope"),
                "run": man.get("run"),
            }
        )
    return out
