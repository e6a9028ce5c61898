"""An ingress replica's write paths: events into the log (acknowledged once Redis has them in its
AOF), feedback to the bandit and the experiment's figures, catalogue writes through the index's
write-ahead log, and forgetting a user in every store. Each answers a `Reply`; a write that was not
acknowledged answers 503 with Retry-After (retrying is safe: event ids and sequence numbers make it
idempotent), and bad input answers 4xx with nothing written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING

import numpy as np

from recserve import keys
from recserve.index.client import IndexUnavailable
from recserve.index.shard import ShardError
from recserve.ranking.bandit import IMPRESSIONS_MAXLEN
from recserve.redis_client import connect
from recserve.serving.api import first_repeat
from recserve.serving.reply import Reply

if TYPE_CHECKING:
    from recserve.serving.service import RecService


class WritePaths:
    def __init__(self, svc: RecService):
        self.svc = svc

    # ---------------------------------------------------------------- events
    async def events(self, events: list[dict], key_id: str | None = None) -> Reply:
        """A batch of validated events; event ids are the sending key's own (`key_id`):
        deduplication is per API key, so one client cannot claim another's ids."""
        t0 = time.perf_counter()
        dup = first_repeat([e.get("event_id") for e in events], "events.{}.event_id")
        if key_id and not dup:
            for e in events:
                if e.get("event_id"):
                    e["event_id"] = f"{key_id}/{e['event_id']}"
        reply = Reply(422, dup) if dup else await self._append(events)
        self.svc.metrics.request("events", reply.status, (time.perf_counter() - t0) * 1000)
        return reply

    async def _append(self, events: list[dict]) -> Reply:
        s = self.svc
        now = int(time.time())
        for e in events:
            e["ts"] = e["ts"] or now
        b = s.breakers["event_log"]
        if not b.allow():
            return Reply.unavailable(
                "the event log is unavailable (circuit open); nothing was written: retry after the Retry-After delay",
                retry_after_s=5,
            )
        try:
            offsets = await s.log.aappend(s.r, events)  # acknowledged by Redis (in its AOF, fsynced)
            b.record(True)
        except (ValueError, TypeError, OverflowError) as e:
            # the request's own fault (validation should have caught it): not the log's, so the
            # breaker that guards every client's events does not count it
            return Reply.invalid(f"the batch cannot be appended: {e}", "events")
        except Exception as e:  # noqa: BLE001 - not acknowledged: the client must retry (ids make it idempotent)
            b.record(False)
            return Reply.unavailable(
                f"the event log did not acknowledge the batch ({type(e).__name__}); retry it: event ids make the "
                f"retry idempotent",
                retry_after_s=1,
            )
        for uid in {e["user_id"] for e in events}:
            s.cache.invalidate_user(uid)
        accepted = sum(o is not None for o in offsets)
        if accepted:
            s.metrics.events(accepted)
        return Reply(202, {"accepted": accepted, "duplicates": len(offsets) - accepted})

    # -------------------------------------------------------------- feedback
    async def feedback(self, item_id: int, reward: float, request_id: str = "") -> Reply:
        """The reward folded into the item's posterior; logged beside the impressions (off-policy
        evaluation) and, when an experiment's arm served the request, into the arm's figures."""
        s = self.svc
        a, b = await s.ports.select.update(item_id, reward)
        arm = s.experiments.feedback_arm(request_id)
        try:
            async with s.r.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    keys.bandit_rewards(),
                    {"request_id": request_id, "item_id": item_id, "reward": reward, "ts": time.time()},
                    maxlen=IMPRESSIONS_MAXLEN,
                    approximate=True,
                )
                if arm is not None:
                    s.experiments.queue_feedback(pipe, arm[0], arm[1], reward)
                await pipe.execute()
        except Exception:  # noqa: BLE001 - the posterior has it; the log of rewards is for evaluation
            pass
        if arm is not None:
            s.metrics.arm_feedback(arm[0], arm[1], reward)
        return Reply(
            200,
            {
                "item_id": item_id,
                "posterior": {"alpha": a, "beta": b},
                **({"experiment": {"name": arm[0], "arm": arm[1]}} if arm else {}),
            },
        )

    # ------------------------------------------------------------- catalogue
    def _vectors(self, items: list) -> list[list[float]] | Reply:
        """Each item's vector, given or placed from its content by the item-content encoder; a
        Reply (422) naming the first item that has neither."""
        s = self.svc
        dim = s.index.dim
        vectors = []
        for j, it in enumerate(items):
            if it.vector is not None:
                if len(it.vector) != dim:
                    return Reply.invalid(
                        f"items.{j}.vector: a vector of dimension {dim} is required (or none: the vector from the "
                        f"item's content)",
                        f"items.{j}.vector",
                    )
                vectors.append(it.vector)
                continue
            enc = s.stage.content
            v = enc.encode(it.title, it.category, it.attributes) if enc is not None and enc.dim == dim else None
            if v is None:
                why = (
                    "the serving embeddings have no content encoder (trained before it): retrain them"
                    if enc is None or enc.dim != dim
                    else "none of its content (title words, category, attribute values) is known to the content encoder"
                )
                return Reply.invalid(
                    f"items.{j}: no vector, and {why}; send a vector of dimension {dim}", f"items.{j}.vector"
                )
            vectors.append(v.tolist())
        return vectors

    async def _changelog(self, rows: list[dict]) -> Reply | None:
        """The catalogue write into its changelog (the stream the lake's sink drains), before the
        index has it: a write the lake would miss is never acknowledged. None when it is written
        (or the lake is off); a 503 Reply when Redis did not take it (nothing was written)."""
        s = self.svc
        if not s.cfg.lake.enabled:
            return None
        now = time.time()
        try:
            async with s.r.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xadd(keys.catalogue_changes(), {**row, "ts": now})
                await pipe.execute()
        except Exception as e:  # noqa: BLE001 - Redis away: nothing written anywhere, the client retries
            return Reply.unavailable(
                f"the catalogue's changelog did not take the write ({type(e).__name__}); nothing was written: retry it",
                retry_after_s=1,
            )
        return None

    async def _to_canaries(self, op: str, items: list) -> None:
        """A catalogue write the serving index took, applied to each canary generation's index too,
        placed by that generation's own content encoder (a vector sent with the item belongs to the
        serving embedding space, not the canary's). Best effort: a canary lacking an item is judged
        on what it has, and the write is in the changelog the next retrain reads."""
        for g in list(self.svc.canaries.values()):
            try:
                if op == "delete":
                    await asyncio.to_thread(g.index.delete, items)
                    continue
                enc = g.stage.content
                if enc is None:
                    continue
                vecs = {it.item_id: enc.encode(it.title, it.category, it.attributes) for it in items}
                kept = [it for it in items if vecs[it.item_id] is not None and len(vecs[it.item_id]) == g.index.dim]
                if not kept:
                    continue
                arr = np.array([vecs[it.item_id] for it in kept], dtype=np.float32)
                metas = [{"category": it.category, "attributes": it.attributes} for it in kept]
                await asyncio.to_thread(g.index.upsert, [it.item_id for it in kept], arr, metas)
                g.stage.add_items({it.item_id: it.category for it in kept}, arr)
            except Exception:  # noqa: BLE001 - the canary's index is not the serving one: never fail the write
                continue

    async def put_items(self, items: list) -> Reply:
        s = self.svc
        dup = first_repeat([it.item_id for it in items], "items.{}.item_id")
        if dup:
            return Reply(422, dup)
        vectors = self._vectors(items)
        if isinstance(vectors, Reply):
            return vectors
        failed = await self._changelog(
            [
                {
                    "op": "upsert",
                    "item_id": it.item_id,
                    "title": it.title or "",
                    "category": it.category,
                    "attributes": json.dumps(it.attributes or {}, separators=(",", ":")),
                }
                for it in items
            ]
        )
        if failed is not None:
            return failed
        try:
            acks = await asyncio.to_thread(
                s.index.upsert,
                [it.item_id for it in items],
                np.array(vectors, dtype=np.float32),
                [{"category": it.category, "attributes": it.attributes, "title": it.title or ""} for it in items],
            )
        except IndexUnavailable as e:
            return Reply.unavailable(
                f"{e}: the write is in the shard's log and will be applied when a replica recovers; retrying it is safe"
            )
        except ShardError as e:  # the batch itself is unfit for the index (checked before any write)
            return Reply.invalid(f"items: {e}", "items")
        s.stage.add_items(
            {it.item_id: it.category for it in items},
            np.array(vectors, dtype=np.float32),
            {it.item_id: it.title for it in items if it.title},
        )
        await self._to_canaries("upsert", items)
        s.cache.clear()  # this replica's cached lists predate the catalogue change
        return Reply(200, {"upserted": len(items), "shards": {str(k): v for k, v in acks.items()}})

    async def delete_item(self, item_id: int) -> Reply:
        s = self.svc
        failed = await self._changelog([{"op": "delete", "item_id": item_id}])
        if failed is not None:
            return failed
        try:
            acks = await asyncio.to_thread(s.index.delete, [item_id])
        except IndexUnavailable as e:
            return Reply.unavailable(
                f"{e}: the delete is in the shard's log and will be applied when a replica recovers; retrying it "
                f"is safe"
            )
        await self._to_canaries("delete", [item_id])
        s.cache.clear()
        return Reply(200, {"deleted": item_id, "shards": {str(k): v for k, v in acks.items()}})

    # ----------------------------------------------------------------- users
    async def forget_user(self, user_id: int) -> Reply:
        """DELETE /v1/users/{id}: the user forgotten in every store (recserve.privacy)."""
        from recserve.privacy import SWEEP_AGAIN_S, forget, sweep_again

        s = self.svc

        def run(fn, *args) -> dict:
            r = connect(s.cfg.redis_url, timeout=10)
            try:
                return fn(r, *args)
            finally:
                r.close()

        async def later() -> None:  # the second sweep, without holding the answer
            await asyncio.sleep(SWEEP_AGAIN_S)
            with contextlib.suppress(Exception):  # best effort: the tombstone already hides new folds
                await asyncio.to_thread(run, sweep_again, user_id)

        try:
            removed = await asyncio.to_thread(run, forget, s.log, user_id)
        except Exception as e:  # noqa: BLE001 - Redis away: nothing can be promised
            return Reply.unavailable(
                f"the user could not be forgotten ({type(e).__name__}: {e}); retry: forgetting twice is harmless"
            )
        s.forget_local([user_id])
        s.spawn(later())
        return Reply(200, {"user_id": user_id, "removed": removed})
