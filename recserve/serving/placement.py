"""Whether a cluster can ever place an application's deployments: each deployment's replica needs
(CPUs, GPUs, custom resources such as a node pool's `api` or `ranker_gpu`) against the shapes of the
nodes the cluster has or its autoscaler can start. A Serve config written for the node pools of
cluster.yaml, deployed on a cluster without them, would otherwise wait for ever while Ray's
autoscaler prints "No available node types can fulfill resource request"; `unplaceable` lets the
application builder refuse at once, naming what is missing."""

from __future__ import annotations

from typing import Any


class PlacementError(RuntimeError):
    """Some deployment fits on no node the cluster has or can start; the message names it."""


def replica_needs(ray_actor_options: dict[str, Any] | None) -> dict[str, float]:
    """What one replica asks of a node, in Ray's resource names (CPU, GPU and the custom ones)."""
    o = ray_actor_options or {}
    need = {k: float(v) for k, v in (o.get("resources") or {}).items() if v}
    if o.get("num_cpus"):
        need["CPU"] = float(o["num_cpus"])
    if o.get("num_gpus"):
        need["GPU"] = float(o["num_gpus"])
    return need


def fits(need: dict[str, float], shape: dict[str, float]) -> bool:
    return all(shape.get(k, 0.0) >= v - 1e-9 for k, v in need.items())


def unplaceable(needs: dict[str, dict[str, float]], shapes: list[dict[str, float]]) -> dict[str, list[str]]:
    """{deployment: the resources no node shape offers enough of} for every deployment whose
    replica fits on none of `shapes` (each a node's total resources)."""
    out = {}
    for name, need in needs.items():
        if need and not any(fits(need, s) for s in shapes):
            out[name] = sorted(k for k, v in need.items() if not any(s.get(k, 0.0) >= v - 1e-9 for s in shapes))
    return out


def message(missing: dict[str, list[str]], needs: dict[str, dict[str, float]], local_config: str) -> str:
    parts = [f"{d} needs {needs[d]} (no node offers {', '.join(r)})" for d, r in sorted(missing.items())]
    return (
        "this Serve config asks for resources that no node of this cluster has and no node type of its "
        f"autoscaler can add: {'; '.join(parts)}. It is written for the node pools of cluster.yaml / "
        f"regions/*.yaml. On the embedded stack (`recserve up`), deploy {local_config} instead "
        f"(`serve run {local_config}`), or `recserve serve`."
    )


def cluster_shapes() -> list[dict[str, float]]:
    """The total resources of each node alive now and of each node type the autoscaler can start
    (from its cluster config in the GCS, where an autoscaler runs)."""
    import ray

    shapes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    try:
        from ray._private.state import state  # how Ray Train itself reads the autoscaler's node types

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler config readable: the nodes alive are what there is
        config = None
    for group in getattr(config, "node_group_configs", None) or []:
        if group.max_count != 0:
            shapes.append({k: float(v) for k, v in group.resources.items()})
    return shapes


def check(deployments: list[dict[str, Any]], local_config: str, shapes: list[dict[str, float]] | None = None) -> None:
    """Raise PlacementError when a deployment of a Serve config's application (`deployments`: its
    `deployments` entries, each with `name` and `ray_actor_options`) fits on no node shape."""
    needs = {d["name"]: replica_needs(d.get("ray_actor_options")) for d in deployments}
    missing = unplaceable(needs, cluster_shapes() if shapes is None else shapes)
    if missing:
        raise PlacementError(message(missing, needs, local_config))
