"""A fresh install, fed only through the API: an application deployed on an empty registry answers
trending and new items at level 4; everything it was sent lands in the lake; the chain trained on
the lake makes the next deploy personalize the same users at level 0."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.integration

CATEGORIES = [f"genre-{c}" for c in "abcdef"]


def test_from_nothing_to_personalized_through_the_api_and_the_lake(serving, stream_cfg, tmp_path):
    import httpx
    from ray import serve

    from deployments.app import build_app
    from recserve.client import Client
    from recserve.lake import Lake, status
    from recserve.offline.jobs.lake import train_on_lake
    from recserve.registry import Registry
    from recserve.streaming.eventlog import make_log
    from tests.conftest import make_key

    http, _, base = serving
    cfg = stream_cfg(base, "redis", None, db=6, topic=f"fresh-{uuid.uuid4().hex[:6]}")
    cfg = cfg.model_copy(
        update={
            "lake": cfg.lake.model_copy(update={"uri": str(tmp_path / "lake"), "flush_s": 0.5}),
            "registry": cfg.registry.model_copy(update={"uri": str(tmp_path / "registry")}),
        }
    )
    import redis

    r = redis.Redis.from_url(cfg.redis_url)
    r.flushdb()
    reg = Registry(cfg.registry_uri, cfg.registry.keep)
    assert reg.latest("embeddings") is None  # nothing trained, nothing imported

    def deploy():
        serve.run(
            build_app(cfg, str(reg.uri), str(tmp_path / "index-live"), name="fresh"),
            name="fresh",
            route_prefix="/fresh",
        )

    deploy()
    try:
        url = f"{str(http.base_url).rstrip('/')}/fresh"
        key = make_key(cfg)
        with Client(url, key=key) as rs:
            st = rs.status()
            assert st["generation"] is None and "no generation is trained yet" in st["message"]
            items = [
                {"item_id": 1200 + i, "title": f"film {i} of {CATEGORIES[i % 6]}", "category": CATEGORIES[i % 6]}
                for i in range(120)
            ]
            assert rs.put_items(items).upserted == 120
            first = rs.recommend(user_id=7, k=5)
            assert first.degradation_level == 4 and not first.live_context
            assert [i.item_id for i in first.items] == [1319, 1318, 1317, 1316, 1315]  # the newest first
            # 40 users, each clicking 12 different items of one category (their taste), over four rounds
            users = list(range(1, 41))
            sent = 0
            for rnd in range(4):
                evs = [
                    {"user_id": u, "item_id": 1200 + (u % 6) + 6 * ((u + rnd * 3 + j) % 20), "event_type": "click"}
                    for u in users
                    for j in range(3)
                ]
                sent += rs.events(evs).accepted
            assert sent == 480
            deadline, got = time.monotonic() + 10, None
            while time.monotonic() < deadline:  # the stream's counters make some items trending
                got = rs.recommend(user_id=7, k=5, filters={"categories": ["genre-b"]})
                if got.items and got.items[0].reasons == ["trending now"]:
                    break
                time.sleep(0.2)
            assert got.degradation_level == 4 and got.items[0].reasons == ["trending now"]
            assert {i.item_id % 6 for i in got.items} == {1}  # within the filters: genre-b only
        sim = httpx.get(f"{url}/v1/items/1200/similar", headers={"authorization": f"Bearer {key}"})
        assert sim.status_code == 503 and "no generation is trained yet" in sim.text  # needs item vectors
        lake, log = Lake(cfg.lake_uri), make_log(cfg, r)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and status(lake, log, r)["rows"] < sent:
            time.sleep(0.5)
        st = status(lake, log, r)
        assert st["rows"] == sent and st["sink_lag"]["events"] == 0
        versions = train_on_lake(cfg, reg)  # the chain on the lake: its events, the changelog's catalogue
        assert set(versions) >= {"embeddings", "index", "ranker"}
        deploy()  # the first generation: the replicas that served without one are replaced
        with Client(url, key=make_key(cfg)) as rs:
            st = rs.status()
            assert st["model_versions"]["embeddings"] == versions["embeddings"]
            hits = 0
            for u in users[:12]:
                got = rs.recommend(user_id=u, k=5)
                assert got.degradation_level == 0, got  # full personalization (no explanation asked: not 1)
                hits += sum(1 for i in got.items if i.item_id % 6 == u % 6)
            assert hits / 60 > 0.5  # personalized: mostly the user's own category
        log.close()
    finally:
        serve.delete("fresh")
