"""API keys, scopes and quotas (recserve.auth) on a real redis-server: what the ingress's gate
answers for each kind of key, before any HTTP (tests/integration/test_auth_http.py has that)."""

import asyncio
import time

import pytest
import redis
import redis.asyncio as aredis

from recserve.auth import SCOPES, AuthError, Gate, KeyStore, TokenBucket, parse_quota, parse_scopes, required_scope

pytestmark = pytest.mark.integration


@pytest.fixture()
def store(redis_url):
    r = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")
    r.flushdb()
    yield KeyStore(r)
    r.flushdb()


def _gate(store, **kw):
    url = store.r.connection_pool.connection_kwargs
    ar = aredis.Redis(host=url["host"], port=url["port"], db=url["db"])
    return Gate(ar, kw.pop("quotas", None), **kw)


def test_keys_are_stored_hashed_listed_and_revoked(store):
    kid, key = store.create("shop", "recommend,events")
    assert key.startswith(f"rs_{kid}_") and len(key) > 30
    dump = b"".join(v for k in store.r.scan_iter() if store.r.type(k) == b"hash" for v in store.r.hgetall(k).values())
    assert key.encode() not in dump and key.split("_", 2)[2].encode() not in dump  # only its hash
    (only,) = store.list()
    assert only["id"] == kid and only["scopes"] == ["recommend", "events"] and only["revoked"] is None
    assert store.revoke(kid) and store.list()[0]["revoked"]
    assert not store.revoke("nosuchid")


def test_bad_scopes_and_quotas_name_what_to_write():
    with pytest.raises(AuthError, match="unknown scope 'write'.*recommend, events"):
        parse_scopes("recommend,write")
    with pytest.raises(AuthError, match="no scope"):
        parse_scopes(" , ")
    assert parse_scopes("admin, recommend") == ["recommend", "admin"]
    assert parse_quota(["recommend=50", "events=10/40"]) == {
        "recommend": {"rate": 50.0, "burst": 100.0},
        "events": {"rate": 10.0, "burst": 40.0},
    }
    for bad in ("recommend=x", "nope=5", "recommend=0", "recommend=5/0"):
        with pytest.raises(AuthError, match="SCOPE=RATE"):
            parse_quota([bad])


def test_routes_and_their_scopes():
    assert required_scope("POST", "/v1/recommend") == "recommend"
    assert required_scope("POST", "/v1/events") == "events"
    assert required_scope("POST", "/v1/feedback") == "feedback"
    assert required_scope("PUT", "/v1/items") == "catalogue"
    assert required_scope("DELETE", "/v1/items/7") == "catalogue"
    assert required_scope("GET", "/v1/items") == "recommend"  # the lookup reads what recommend shows
    assert required_scope("GET", "/v1/status") == "admin"
    assert required_scope("DELETE", "/v1/users/7") == "admin"
    assert required_scope("GET", "/v1/whatever") == "admin"
    for open_path in ("/healthz", "/readyz", "/openapi.json", "/ui"):
        assert required_scope("GET", open_path) is None


def test_gate_401_403_429_and_revocation(store):
    async def go():
        gate = _gate(store)
        await gate.refresh()
        rid, rec = store.create("reader", "recommend", {"recommend": {"rate": 1.0, "burst": 2.0}})
        _, adm = store.create("ops", "admin")
        out = {}
        out["none"] = (await gate.check(None, "recommend"))[0]
        out["basic"] = (await gate.check("Basic abc", "recommend"))[0]
        out["wrong"] = (await gate.check("Bearer rs_0000_nope", "recommend"))[0]
        out["ok"] = [(await gate.check(f"Bearer {rec}", "recommend"))[0] for _ in range(2)]
        out["over"] = (await gate.check(f"Bearer {rec}", "recommend"))[0]
        out["scope"] = (await gate.check(f"Bearer {rec}", "events"))[0]
        out["admin"] = [(await gate.check(f"bearer {adm}", s))[0] for s in SCOPES]
        store.revoke(rid)
        out["cached"] = (await gate.check(f"Bearer {rec}", "events"))[0][0]  # not yet seen: still known
        await gate.refresh()
        out["revoked"] = (await gate.check(f"Bearer {rec}", "recommend"))[0]
        await gate.r.aclose()
        return out, gate

    out, gate = asyncio.run(go())
    for k in ("none", "basic", "wrong", "revoked"):
        assert out[k][0] == 401 and out[k][1] == "unauthenticated" and out[k][3] == {"WWW-Authenticate": "Bearer"}, k
    assert "recserve keys create" in out["none"][2]
    assert out["ok"] == [None, None]
    status, code, msg, headers = out["over"]
    assert status == 429 and code == "over_quota" and int(headers["Retry-After"]) >= 1
    assert out["scope"][0] == 403 and "lacks the 'events' scope" in out["scope"][2]
    assert out["admin"] == [None] * len(SCOPES)
    assert out["cached"] == 403
    assert gate.refused == {"401": 4, "403": 2, "429": 1}


def test_quota_is_shared_between_replicas_and_disabled_gate_lets_all_through(store):
    async def go():
        _, key = store.create("bulk", "events", {"events": {"rate": 10.0, "burst": 10.0}})
        two = _gate(store, replicas=2)
        got = [(await two.check(f"Bearer {key}", "events"))[0] is None for _ in range(8)]
        off = _gate(store, enabled=False)
        res = (await off.check(None, "admin"))[0]
        await two.r.aclose()
        await off.r.aclose()
        return got, res

    got, res = asyncio.run(go())
    assert got == [True] * 5 + [False] * 3  # a burst of 10 over 2 replicas: 5 here
    assert res is None


def test_unreachable_key_store_keeps_known_keys_and_refuses_unknown_ones_with_503(store):
    async def go():
        gate = _gate(store)
        _, key = store.create("svc", "recommend")
        first = (await gate.check(f"Bearer {key}", "recommend"))[0]
        await gate.r.aclose()
        gate.r = aredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
        again = (await gate.check(f"Bearer {key}", "recommend"))[0]
        unknown = (await gate.check("Bearer rs_1234_other", "recommend"))[0]
        return first, again, unknown

    first, again, unknown = asyncio.run(go())
    assert first is None and again is None
    assert unknown[0] == 503 and "Retry-After" in unknown[3]


def test_token_bucket_refills_at_its_rate():
    b = TokenBucket(rate=50.0, burst=1.0)
    assert b.take() == 0.0
    wait = b.take()
    assert 0 < wait <= 0.02 + 1e-9
    time.sleep(wait + 0.005)
    assert b.take() == 0.0
