"""API keys, their scopes and their quotas: plain classes the ingress's gate, the CLI
(`recserve keys create|list|revoke`) and the tests call.

A key reads `rs_<id>_<secret>`. Redis keeps only its SHA-256 (`auth:hash:<sha>` -> id) and a
record per id (`auth:key:<id>`: name, scopes, quota overrides, created, revoked); the secret is
printed once, at creation. Every create or revoke bumps `auth:gen`: each ingress replica reads
it once a second and forgets the keys it had looked up, so a revoked key stops working within a
second or so, while a lookup on the request path costs a dict read (no Redis round trip).

Scopes: `recommend`, `events`, `feedback`, `catalogue`, `admin`; `admin` holds every other.
Quotas: a token bucket per key and scope (requests per second, burst), from `auth.quotas` unless
the key carries its own; each ingress replica enforces its share (rate / replicas)."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field

from recserve import keys as K

SCOPES = ("recommend", "events", "feedback", "catalogue", "admin")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/ui"})


class AuthError(ValueError):
    """A bad scope, quota or key id given to the key store (the CLI prints it)."""


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs; None for the open paths (health, readiness, the schema, the
    status page's HTML, which asks for a key before it reads anything)."""
    if path in OPEN_PATHS:
        return None
    if path == "/v1/recommend":
        return "recommend"
    if path == "/v1/events":
        return "events"
    if path == "/v1/feedback":
        return "feedback"
    if method.upper() == "GET" and path == "/v1/items":
        return "recommend"  # looking items up (their titles and categories) reads what recommend shows
    if method.upper() == "GET" and path.startswith("/v1/items/") and path.endswith("/similar"):
        return "recommend"  # "more like this" reads what recommend reads
    if path == "/v1/items" or path.startswith("/v1/items/"):
        return "catalogue"
    return "admin"  # status, forgetting a user, anything else (an unknown path needs a key too)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str | list[str]) -> list[str]:
    got = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    bad = [s for s in got if s not in SCOPES]
    if bad or not got:
        what = f"unknown scope {bad[0]!r}" if bad else "no scope given"
        raise AuthError(f"{what}; the scopes are {', '.join(SCOPES)} (comma-separated)")
    return sorted(set(got), key=SCOPES.index)


def parse_quota(items: list[str]) -> dict[str, dict[str, float]]:
    """`recommend=50` or `recommend=50/200` (rate per second / burst) per scope."""
    out: dict[str, dict[str, float]] = {}
    for it in items:
        scope, _, val = it.partition("=")
        rate, _, burst = val.partition("/")
        try:
            if scope not in SCOPES:
                raise ValueError(f"unknown scope {scope!r}")
            r = float(rate)
            b = float(burst) if burst else 2 * r
            if not (r > 0 and b >= 1):
                raise ValueError("the rate must be > 0 and the burst >= 1")
        except ValueError as e:
            raise AuthError(f"quota {it!r}: {e}; write SCOPE=RATE or SCOPE=RATE/BURST, e.g. recommend=50/100") from e
        out[scope] = {"rate": r, "burst": b}
    return out


class KeyStore:
    """Create, list, revoke and look up keys in Redis (a synchronous client: the CLI, tests)."""

    def __init__(self, r):
        self.r = r

    def create(
        self, name: str, scopes: str | list[str], quota: dict | None = None, key: str | None = None
    ) -> tuple[str, str]:
        """(key id, the key itself): the key is shown this once and stored only hashed. `key`: one
        created before in another store (another region's Redis), made valid here too."""
        sc = parse_scopes(scopes)
        if not name or len(name) > 100:
            raise AuthError("give the key a name of 1 to 100 characters (who uses it)")
        if key is None:
            kid = secrets.token_hex(4)
            key = f"rs_{kid}_{secrets.token_urlsafe(24)}"
        else:
            m = re.fullmatch(r"rs_([0-9a-f]{8})_[A-Za-z0-9_-]{32}", key)
            if m is None:
                raise AuthError("not a recserve key (rs_<id>_<secret>, as `recserve keys create` prints)")
            kid = m.group(1)
        rec = {
            "name": name,
            "scopes": ",".join(sc),
            "quota": json.dumps(quota or {}),
            "created": str(int(time.time())),
            "revoked": "0",
            "hash": digest(key),
        }
        self._put(kid, rec, rec["hash"])
        return kid, key

    def _put(self, kid: str, rec: dict, valid_hash: str | None) -> None:
        """A key's record stored, its hash looked up to it when it is valid (`valid_hash`); the
        generation moves, so every ingress replica re-reads its keys."""
        p = self.r.pipeline(transaction=True)
        p.hset(K.auth_key(kid), mapping=rec)
        if valid_hash is not None:
            p.set(K.auth_hash(valid_hash), kid)
        p.sadd(K.AUTH_IDS, kid)
        p.incr(K.AUTH_GEN)
        p.execute()

    def _revoked(self, kid: str, key_hash: str, when: str) -> None:
        """A key marked revoked at `when` and its hash no longer looked up; the generation moves."""
        p = self.r.pipeline(transaction=True)
        p.hset(K.auth_key(kid), "revoked", when)
        p.delete(K.auth_hash(key_hash))
        p.incr(K.AUTH_GEN)
        p.execute()

    def list(self) -> list[dict]:
        out = []
        for kid in sorted(x.decode() for x in self.r.smembers(K.AUTH_IDS)):
            rec = {k.decode(): v.decode() for k, v in self.r.hgetall(K.auth_key(kid)).items()}
            if rec:
                out.append(
                    {
                        "id": kid,
                        "name": rec["name"],
                        "scopes": rec["scopes"].split(","),
                        "quota": json.loads(rec.get("quota") or "{}"),
                        "created": int(rec["created"]),
                        "revoked": int(rec.get("revoked", 0)) or None,
                    }
                )
        return out

    def merge_from(self, src: KeyStore) -> int:
        """Another region's keys made valid here too (cross-region replication, both ways): a key there
        and not here is added; one revoked there is revoked here (a revocation wins, wherever it was
        made). Returns how many keys changed here."""
        changed = 0
        for kid in sorted(x.decode() for x in src.r.smembers(K.AUTH_IDS)):
            theirs = src.r.hgetall(K.auth_key(kid))
            if not theirs:
                continue
            ours = self.r.hgetall(K.auth_key(kid))
            revoked_there = theirs.get(b"revoked", b"0") != b"0"
            if not ours:
                self._put(kid, theirs, None if revoked_there else theirs[b"hash"].decode())
            elif revoked_there and ours.get(b"revoked", b"0") == b"0":
                self._revoked(kid, ours[b"hash"].decode(), theirs[b"revoked"].decode())
            else:
                continue
            changed += 1
        return changed

    def revoke(self, kid: str) -> bool:
        """False when there is no such key; revoking twice is harmless."""
        rec = self.r.hgetall(K.auth_key(kid))
        if not rec:
            return False
        self._revoked(kid, rec[b"hash"].decode(), str(int(time.time())))
        return True


@dataclass
class Principal:
    """A valid key as the gate sees it."""

    id: str
    name: str
    scopes: frozenset
    quota: dict = field(default_factory=dict)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Gate:
    """A ingress replica's key check: (status, error code, message, headers, principal) per request.
    Looked-up keys are remembered until `auth:gen` changes; a Redis that cannot be reached keeps
    the remembered keys working and refuses unknown ones with 503 (it cannot tell)."""

    def __init__(
        self, aredis, quotas: dict[str, dict[str, float]] | None = None, replicas: int = 1, enabled: bool = True
    ):
        from recserve.config import _default_quotas

        self.r = aredis
        self.quotas = {**_default_quotas(), **(quotas or {})}  # a scope the config leaves out keeps its default
        self.share = 1.0 / max(1, replicas)
        self.enabled = enabled
        self.known: dict[str, Principal | None] = {}
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self.gen: bytes | None = None
        self.refused = {"401": 0, "403": 0, "429": 0}

    async def refresh(self) -> None:
        """Forget the looked-up keys when one was created or revoked (called once a second)."""
        g = await self.r.get(K.AUTH_GEN)
        if g != self.gen:
            self.known.clear()
            self.gen = g

    async def _lookup(self, key: str) -> Principal | None:
        h = digest(key)
        if h in self.known:
            return self.known[h]
        kid = await self.r.get(K.auth_hash(h))
        p = None
        if kid is not None:
            rec = await self.r.hgetall(K.auth_key(kid.decode()))
            if rec and rec.get(b"revoked", b"0") == b"0":
                p = Principal(
                    kid.decode(),
                    rec[b"name"].decode(),
                    frozenset(rec[b"scopes"].decode().split(",")),
                    json.loads(rec.get(b"quota", b"{}") or b"{}"),
                )
        if len(self.known) > 100_000:  # guessed keys must not grow it without end
            self.known.clear()
        self.known[h] = p
        return p

    def _bucket(self, p: Principal, scope: str) -> TokenBucket:
        b = self.buckets.get((p.id, scope))
        if b is None:
            q = p.quota.get(scope) or self.quotas[scope]
            rate = float(q["rate"]) * self.share
            b = self.buckets[(p.id, scope)] = TokenBucket(rate, max(1.0, float(q["burst"]) * self.share))
        return b

    async def check(self, authorization: str | None, scope: str):
        """(refusal, principal): refusal is None when the request may go on, else (status, code,
        message, headers); principal is the key's, when it is a valid one."""
        if not self.enabled:
            return None, None
        if not authorization:
            self.refused["401"] += 1
            return (
                401,
                "unauthenticated",
                "this endpoint needs an API key: send 'Authorization: Bearer <key>' (`recserve keys create` makes one)",
                {"WWW-Authenticate": "Bearer"},
            ), None
        kind, _, key = authorization.partition(" ")
        if kind.lower() != "bearer" or not key.strip():
            self.refused["401"] += 1
            return (
                401,
                "unauthenticated",
                "the Authorization header must read 'Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            ), None
        try:
            p = await self._lookup(key.strip())
        except Exception as e:  # noqa: BLE001 - Redis away and the key not seen before
            return (
                503,
                "unavailable",
                f"the key store cannot be reached ({type(e).__name__}) to check this key; "
                "retry after the Retry-After delay",
                {"Retry-After": "2"},
            ), None
        if p is None:
            self.refused["401"] += 1
            return (401, "unauthenticated", "unknown or revoked API key", {"WWW-Authenticate": "Bearer"}), None
        if not p.allows(scope):
            self.refused["403"] += 1
            return (
                403,
                "forbidden",
                f"key {p.id} ({p.name}) lacks the {scope!r} scope (it has {', '.join(sorted(p.scopes))})",
                None,
            ), p
        wait = self._bucket(p, scope).take()
        if wait > 0:
            self.refused["429"] += 1
            return (
                429,
                "over_quota",
                f"key {p.id} is over its {scope!r} quota; retry after the Retry-After delay",
                {"Retry-After": str(max(1, int(wait + 0.999)))},
            ), p
        return None, p
