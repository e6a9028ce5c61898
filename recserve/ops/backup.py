"""Backup and restore of the stack's state as one timestamped, consistent backup:

  redis/dump.rdb, appendonly.aof  a BGSAVE taken at the backup point (features, live contexts,
                                  counters, bandit parameters, the event log streams, the
                                  aggregators' committed offsets), plus the AOF as it was
  index/<root>/...                the live indexes' snapshots and write-ahead logs
  registry/...                    the registry's manifests and latest pointers (the artifacts
                                  themselves live in the registry's own durable storage)
  manifest.json                   the point (unix time), offsets per partition, sizes, checksums

under a local path or any pyarrow.fs URI (`s3://...`, `gs://...`), one folder per backup,
the newest `keep` kept. `restore` picks the newest backup at or before `--point-in-time`, loads it
into a stopped (empty) stack and turns the AOF back on. What is lost is what Redis acknowledged
after the backup point; RTO and RPO are measured by tests/integration/test_backup.py."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import redis

from recserve import keys
from recserve.index.shard import sha256_file
from recserve.redis_client import connect, url_of


class BackupError(RuntimeError):
    pass


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    p = Path(uri).resolve()
    p.mkdir(parents=True, exist_ok=True)
    return pafs.LocalFileSystem(), str(p)


def _bgsave(r: redis.Redis, timeout_s: float = 300.0) -> float:
    """A BGSAVE that starts now; returns when its file is written. The returned time is the
    backup point (the fork)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            point = time.time()
            r.bgsave()
            break
        except redis.exceptions.ResponseError as e:  # an automatic save runs: wait for it, then ours
            if "in progress" not in str(e) or time.monotonic() > deadline:
                raise BackupError(f"Redis refused BGSAVE: {e}") from e
            time.sleep(0.05)
    while time.monotonic() < deadline:
        p = r.info("persistence")
        if not p.get("rdb_bgsave_in_progress"):
            if p.get("rdb_last_bgsave_status") != "ok":
                raise BackupError("Redis's BGSAVE failed (see its log): no backup was written")
            return point
        time.sleep(0.02)
    raise BackupError(f"BGSAVE did not finish within {timeout_s}s")


def _offsets(r: redis.Redis, cfg) -> dict:
    """Per partition: the aggregators' committed offset and count, and the log's length (committed +
    pending) through the configured event log (None where its broker does not answer)."""
    from recserve.streaming.eventlog import EventLogUnavailable, make_log

    partitions = cfg.stream.partitions
    pipe = r.pipeline(transaction=False)
    for p in range(partitions):
        pipe.get(keys.committed_offset(p))
        pipe.get(keys.committed_count(p))
    res = pipe.execute()
    counts = [res[2 * p + 1] for p in range(partitions)]
    try:
        log = make_log(cfg, r, timeout_s=3.0)
        pending = log.pending(r, counts)
        log.close()
    except EventLogUnavailable:
        pending = None
    out = {}
    for p in range(partitions):
        off, done = res[2 * p : 2 * p + 2]
        out[str(p)] = {
            "committed_offset": off.decode() if off else None,
            "committed_events": int(done or 0),
            "log_length": None if pending is None else int(done or 0) + pending[p],
        }
    return out


def list_backups(uri: str) -> list[dict]:
    fs, root = _fs(uri)
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{info.path}/manifest.json") as f:
                m = json.loads(f.read())
            out.append({**m, "path": info.path})
        except (OSError, FileNotFoundError, json.JSONDecodeError):
            continue  # an unfinished backup (no manifest): never restored from
    return sorted(out, key=lambda m: m["point"])


def backup(cfg, dest: str, keep: int = 24, log=print) -> dict:
    t0 = time.perf_counter()
    r = connect(cfg.redis_url, timeout=30)
    try:
        rdir = Path(r.config_get("dir")["dir"])
    except redis.exceptions.RedisError as e:
        raise BackupError(f"Redis at {cfg.redis_shown} is not reachable: {e}") from e
    if not (rdir / "dump.rdb").parent.is_dir():
        raise BackupError(
            f"Redis writes its files to {rdir}, which this machine cannot read: run the backup "
            f"on the Redis host (or use the managed Redis's own snapshots)"
        )
    point = _bgsave(r)
    offsets = _offsets(r, cfg)  # read just after the point: informative
    keys = r.dbsize()
    name = time.strftime("%Y%m%dT%H%M%S", time.gmtime(point)) + f"{point % 1:.3f}"[1:].replace(".", "-")
    data_dir = Path(cfg.data_dir).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        (stage / "redis").mkdir(parents=True)
        for f in ("dump.rdb", "appendonly.aof"):
            if (rdir / f).exists():
                shutil.copy2(rdir / f, stage / "redis" / f)
        roots = sorted(p for p in data_dir.glob("index-live*") if p.is_dir())
        for root in roots:
            shutil.copytree(root, stage / "index" / root.name)
        reg = Path(cfg.registry_uri) if "://" not in cfg.registry_uri else None
        if reg is not None and reg.is_dir():
            for f in reg.rglob("*"):
                if f.is_file() and (f.name in ("manifest.json", "latest") or f.suffix == ".json"):
                    if ".staging" in f.parts:
                        continue
                    dst = stage / "registry" / f.relative_to(reg)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dst)
        files = {
            str(p.relative_to(stage)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(stage.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "name": name,
            "point": point,
            "point_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(point)),
            "redis_keys": keys,
            "offsets": offsets,
            "index_roots": [p.name for p in roots],
            "files": files,
            "backup_s": None,
        }
        fs, root = _fs(dest)
        target = f"{root}/{name}"
        fs.create_dir(target, recursive=True)
        pafs.copy_files(str(stage), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        manifest["backup_s"] = round(time.perf_counter() - t0, 3)
        with fs.open_output_stream(f"{target}/manifest.json") as f:  # last: marks the backup complete
            f.write(json.dumps(manifest, indent=2).encode())
    log(
        f"backup {name}: {keys} Redis keys, {len(roots)} index roots, {len(files)} files in "
        f"{manifest['backup_s']:.2f}s -> {target}"
    )
    for old in list_backups(dest)[:-keep] if keep else []:
        fs.delete_dir(old["path"])
        log(f"removed old backup {old['name']} (keeping {keep})")
    return {**manifest, "path": target}


def _parse_point(point) -> float | None:
    if point is None or point == "":
        return None
    try:
        return float(point)
    except (TypeError, ValueError):
        pass
    import datetime as dt

    try:
        d = dt.datetime.fromisoformat(str(point).replace("Z", "+00:00"))
    except ValueError as e:
        raise BackupError(
            f"--point-in-time {point!r}: give unix seconds or an ISO time like 2026-11-26T21:00:00Z"
        ) from e
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


def check_manifest(b: dict) -> None:
    """A manifest only names what a backup writes: index roots `index-live*` directly under the data
    directory, files inside the backup; anything else (a path that climbs out, an absolute one) is
    refused before restore deletes or replaces a thing."""
    import re

    name = b.get("name", "?")
    roots = b.get("index_roots")
    files = b.get("files")
    if not isinstance(roots, list) or not isinstance(files, dict):
        raise BackupError(f"backup {name}: its manifest lacks index_roots or files; choose another --point-in-time")
    for r in roots:
        if not isinstance(r, str) or not re.fullmatch(r"index-live[A-Za-z0-9._-]*", r) or r in (".", ".."):
            raise BackupError(
                f"backup {name}: index root {r!r} is not an index-live* directory name; the manifest "
                f"is damaged or not ours: nothing was restored"
            )
    for rel, meta in files.items():
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or not isinstance(meta, dict) or "sha256" not in meta:
            raise BackupError(
                f"backup {name}: file entry {rel!r} points outside the backup or has no checksum; nothing was restored"
            )


def restore(cfg, src: str, point_in_time=None, force: bool = False, log=print) -> dict:
    """Load the newest backup at or before `point_in_time` into the (stopped) stack's Redis
    directory, indexes and registry; the stack is left stopped — `recserve up` serves it."""
    from recserve.ops.procs import free_port, port_is_free, stop_pid
    from recserve.ops.redis_server import start_redis
    from recserve.ops.stack import Stack

    t0 = time.perf_counter()
    at = _parse_point(point_in_time)
    backups = list_backups(src)
    chosen = [b for b in backups if at is None or b["point"] <= at]
    if not chosen:
        have = ", ".join(b["point_iso"] for b in backups) or "none"
        raise BackupError(f"no backup at or before {point_in_time} under {src} (backups: {have})")
    b = chosen[-1]
    check_manifest(b)  # before anything is deleted or replaced
    st = Stack(cfg)
    if st.read_state() is not None and st._alive(st.read_state()):
        raise BackupError("the stack is running: stop it first (`recserve down`); restore loads into a stopped stack")
    if not port_is_free(cfg.redis.port, cfg.redis.host):
        raise BackupError(f"port {cfg.redis.port} is in use: something still runs there")
    data_dir = Path(cfg.data_dir).resolve()
    rdir = data_dir / "redis"
    if rdir.exists() and any(rdir.glob("*.rdb")) or (rdir / "appendonly.aof").exists():
        if not force:
            raise BackupError(
                f"{rdir} holds data: restore goes into an empty stack; move it away or pass --force "
                f"(which keeps it as {rdir.name}.before-restore-<time>)"
            )
        rdir.rename(rdir.with_name(f"redis.before-restore-{int(time.time())}"))
    fs, _ = _fs(src)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / b["name"]
        pafs.copy_files(b["path"], str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        for rel, meta in b["files"].items():
            if sha256_file(local / rel) != meta["sha256"]:
                raise BackupError(
                    f"backup {b['name']}: {rel} does not match its checksum; choose another --point-in-time"
                )
        rdir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local / "redis" / "dump.rdb", rdir / "dump.rdb")
        for root in b["index_roots"]:
            dst = data_dir / root
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(local / "index" / root, dst)
        reg = Path(cfg.registry_uri) if "://" not in cfg.registry_uri else None
        if reg is not None and (local / "registry").exists():
            for f in (local / "registry").rglob("*"):
                dst = reg / f.relative_to(local / "registry")
                if f.is_file() and not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dst)
    # load the RDB with the AOF off (with it on, Redis would start from an empty AOF), then turn
    # the AOF on: Redis rewrites it from the loaded data; a clean shutdown leaves both on disk
    port = free_port()
    keys, offsets = None, None
    proc = start_redis(rdir, "127.0.0.1", port, appendonly=False)
    try:
        r = connect(url_of("127.0.0.1", port), timeout=60)
        keys = r.dbsize()
        r.config_set("appendonly", "yes")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            p = r.info("persistence")
            if p.get("aof_enabled") and not p.get("aof_rewrite_in_progress") and not p.get("aof_rewrite_scheduled"):
                break
            time.sleep(0.05)
        offsets = _offsets(r, cfg)
        r.shutdown(save=True)
    except redis.exceptions.ConnectionError:
        pass
    finally:
        stop_pid(proc.pid)
    res = {
        "restored": b["name"],
        "point": b["point"],
        "point_iso": b["point_iso"],
        "redis_keys": keys,
        "offsets": offsets,
        "index_roots": b["index_roots"],
        "restore_s": round(time.perf_counter() - t0, 3),
    }
    log(
        f"restored backup {b['name']} ({b['point_iso']}): {keys} keys, {len(b['index_roots'])} index roots in "
        f"{res['restore_s']:.2f}s; `recserve up` serves it"
    )
    return res
