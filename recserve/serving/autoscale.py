"""Queue-depth autoscaling for Serve deployments that queue work (the ranker's batches, the
explainer's generations): replicas report `queue_depth` through `record_autoscaling_stats()`, and
this policy asks for enough replicas that each holds at most `target_ongoing_requests` of it —
or what Serve's own ongoing-request policy asks, whichever is more. Serve applies min/max,
the up/down delays (30 s / 300 s by default here) and the scaling factors around it.

Referenced by import path from serve_config.yaml and deployments/app.py:
  autoscaling_config.policy.policy_function = "recserve.serving.autoscale:queue_depth_policy"
"""

from __future__ import annotations

import math
from typing import Any

QUEUE_DEPTH = "queue_depth"
POLICY = "recserve.serving.autoscale:queue_depth_policy"


def desired_replicas(current: int, queue_depths: list[float], total_ongoing: float, target: float) -> int:
    """The decision as a plain function (unit-tested): replicas so that the queue per replica
    and the ongoing requests per replica both stay at or under `target`."""
    if target <= 0:
        raise ValueError("target_ongoing_requests must be positive")
    if current == 0:
        return 1 if (sum(queue_depths) > 0 or total_ongoing > 0) else 0
    by_queue = math.ceil(sum(queue_depths) / target)
    by_ongoing = math.ceil(total_ongoing / target)
    return max(by_queue, by_ongoing, 1)


def queue_depth_policy(ctx) -> tuple[int, dict[str, Any]]:
    """Serve custom autoscaling policy (ray.serve.config.AutoscalingContext -> replicas, state)."""
    metrics = ctx.aggregated_metrics or {}
    depths = list((metrics.get(QUEUE_DEPTH) or {}).values())
    want = desired_replicas(
        ctx.current_num_replicas, depths, ctx.total_num_requests, ctx.config.get_target_ongoing_requests()
    )
    return want, {"queue_depth": sum(depths)}


def autoscaling_config(
    min_replicas: int = 1,
    max_replicas: int = 4,
    target: float = 32,
    upscale_delay_s: float = 30,
    downscale_delay_s: float = 300,
    queue_policy: bool = True,
    **extra,
) -> dict:
    """An `autoscaling_config` dict with the seed's stabilisation delays as defaults."""
    cfg = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target,
        "upscale_delay_s": upscale_delay_s,
        "downscale_delay_s": downscale_delay_s,
        **extra,
    }
    if queue_policy:
        cfg["policy"] = {"policy_function": POLICY}
    return cfg
