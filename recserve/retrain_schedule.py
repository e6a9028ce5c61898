"""The loop's schedule (`retrain.every`): when a retrain is due, and its submission. The stream's
supervisor actor (actors/supervisor.py), which every application deploying recserve gets or
creates and which stops with the last of them, asks `RetrainSchedule.tick` every few seconds; the
job itself runs wherever the cluster puts it (`python -m pipelines.retrain`, submitted through Ray's
jobs API). A retrain is due `every` after the last one started (a first one `every` after the
schedule started); one running (its lock held) or submitted and not yet started is waited for.
The schedule's own state (last submission, job id, error) is in retrain:schedule."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from recserve import keys

SCHEDULE_KEY = "retrain:schedule"


class RetrainSchedule:
    def __init__(self, cfg, r, submit: Callable[[], str], now: float | None = None):
        self.cfg = cfg
        self.r = r
        self.submit = submit  # submits `python -m pipelines.retrain`; returns the job's id
        self.every_s = cfg.retrain.every_s
        self.started_at = time.time() if now is None else now

    def state(self) -> dict:
        raw = self.r.get(SCHEDULE_KEY)
        return json.loads(raw) if raw else {}

    def due(self, now: float) -> bool:
        if self.every_s is None or self.r.exists(keys.RETRAIN_LOCK):
            return False
        st = self.state()
        raw = self.r.get(keys.RETRAIN_STATUS)
        last_run = float(json.loads(raw).get("started_at", 0)) if raw else 0.0
        last = max(last_run, float(st.get("submitted_at", 0)), self.started_at if not last_run else 0.0)
        return now - last >= self.every_s

    def tick(self, now: float | None = None) -> str | None:
        """Submit a retrain when one is due; its job id (None: not due, or the submission failed)."""
        now = time.time() if now is None else now
        if not self.due(now):
            return None
        st = {"submitted_at": now, "every": self.cfg.retrain.every}
        try:
            st["job"] = self.submit()
        except Exception as e:  # noqa: BLE001 - the jobs API away: noted, tried again after `every`
            st["error"] = f"{type(e).__name__}: {e}"
        self.r.set(SCHEDULE_KEY, json.dumps(st))
        return st.get("job")
