"""What the benchmarks and the chaos run share."""

from __future__ import annotations


def require_own_serve(what: str) -> None:
    """Benchmarks deploy their own applications on their own HTTP port: refuse to run beside
    applications already served on this cluster (`make demo`), whose load would skew the figures."""
    from ray import serve

    try:
        running = serve.status().applications
    except Exception:  # noqa: BLE001 - no Serve instance yet: what we want
        running = {}
    if running:
        raise RuntimeError(
            f"Serve already runs applications {sorted(running)} on this cluster (make demo?); {what} "
            f"needs its own Serve instance: stop them (Ctrl-C the demo) and run it again"
        )
    try:  # a Serve instance with nothing deployed keeps its HTTP port: stop it, so ours takes effect
        if serve.context._get_global_client(raise_if_no_controller_running=False) is not None:
            serve.shutdown()
    except Exception:  # noqa: BLE001 - none running
        pass


def write_result(out, res: dict) -> None:
    """A benchmark's JSON result at `out` (None: not written)."""
    import json
    from pathlib import Path

    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2))


def percentiles(
    values, ps=(50, 95), digits: int = 2, prefix: str = "p", suffix: str = "_ms"
) -> dict[str, float | None]:
    """{"p50_ms": ..., "p95_ms": ...} of `values` (rounded to `digits`; None for no values): the one
    percentile summary every benchmark reports."""
    import numpy as np

    a = np.asarray(list(values), dtype=float)
    return {f"{prefix}{p}{suffix}": (round(float(np.percentile(a, p)), digits) if a.size else None) for p in ps}
