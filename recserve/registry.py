"""Versioned artifact registry under a local path or any pyarrow.fs URI (s3://, gs://, file://...).

Layout::

    <root>/<name>/versions/<version>/   the artifact's files and manifest.json
    <root>/<name>/latest                JSON {"version": ...}: the pointer readers follow
    <root>/<name>/.staging/             half-written versions (never read)

A version is written into staging, moved into `versions/` only when complete (its manifest last),
and only then does `latest` move (written to a temp name and renamed, a single object PUT on
object stores). A job that fails or is killed midway leaves `latest` and every published
version as they were. The last `keep` versions are kept; older ones are pruned after a publish.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

MANIFEST = "manifest.json"
NOTE = "note.json"  # a version's mutable side note (write_note)
_VERSION_RE = re.compile(r"^v(\d{6,})$")


class RegistryError(RuntimeError):
    """The registry cannot be read or written; the message names the path and the cause."""


def _split_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise RegistryError(f"registry URI {uri!r} is not usable: {e}") from e
    return fs, path.rstrip("/")


class Registry:
    def __init__(self, uri: str | Path, keep: int = 10, publish_latest: bool = True):
        self.uri = str(uri)
        self.keep = keep
        self.publish_latest = publish_latest  # False: publish() leaves `latest` where it is (a retrain's candidate)
        self.fs, self.root = _split_uri(self.uri)

    # ----------------------------------------------------------------- paths
    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    # ------------------------------------------------------------------ read
    def versions(self, name: str) -> list[str]:
        sel = pafs.FileSelector(self._p(name, "versions"), allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            base = info.path.rstrip("/").rsplit("/", 1)[-1]
            if (
                info.type == pafs.FileType.Directory
                and _VERSION_RE.match(base)
                and self.fs.get_file_info(self._p(name, "versions", base, MANIFEST)).type == pafs.FileType.File
            ):
                out.append(base)
        return sorted(out, key=lambda v: int(v[1:]))

    def latest(self, name: str) -> str | None:
        try:
            with self.fs.open_input_stream(self._p(name, "latest")) as f:
                return json.loads(f.read().decode())["version"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as e:
            raise RegistryError(f"latest pointer of {name!r} in {self.uri} is unreadable: {e}") from e

    def pointer(self, name: str) -> dict | None:
        """`latest` with when it moved: {"version", "at"} (None: nothing published)."""
        try:
            with self.fs.open_input_stream(self._p(name, "latest")) as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise RegistryError(f"latest pointer of {name!r} in {self.uri} is unreadable: {e}") from e

    def resolve(self, name: str, version: str | None = None) -> str:
        v = version or self.latest(name)
        if v is None:
            raise RegistryError(
                f"no published version of {name!r} in registry {self.uri}; run the job that publishes it first"
            )
        if v not in self.versions(name):
            known = ", ".join(self.versions(name)) or "none"
            raise RegistryError(f"version {v!r} of {name!r} is not in registry {self.uri} (known: {known})")
        return v

    def manifest(self, name: str, version: str | None = None) -> dict:
        v = self.resolve(name, version)
        with self.fs.open_input_stream(self._p(name, "versions", v, MANIFEST)) as f:
            return json.loads(f.read().decode())

    def fetch(self, name: str, version: str | None = None, cache_dir: str | Path | None = None) -> Path:
        """A local directory holding the version's files (the registry's own folder when local)."""
        v = self.resolve(name, version)
        src = self._p(name, "versions", v)
        if self._is_local():
            return Path(src)
        dest = Path(cache_dir or Path.home() / ".cache" / "recserve") / name / v
        if not (dest / MANIFEST).exists():
            tmp = dest.with_name(dest.name + f".tmp-{uuid.uuid4().hex[:6]}")
            tmp.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(src, str(tmp), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
            tmp.rename(dest)
        return dest

    # ----------------------------------------------------------------- write
    def check_writable(self, name: str) -> None:
        """Fail early (before a long job) when the registry path cannot be written."""
        probe = self._p(name, ".staging", f"probe-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.create_dir(self._p(name, ".staging"), recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except (OSError, PermissionError) as e:
            raise RegistryError(
                f"registry {self.uri} is not writable ({e}); choose a writable path with "
                f"--registry or RECSERVE_REGISTRY__URI"
            ) from e

    def _next_version(self, name: str) -> str:
        existing = self.versions(name)
        sel = pafs.FileSelector(self._p(name, "versions"), allow_not_found=True)
        nums = [
            int(m.group(1))
            for i in self.fs.get_file_info(sel)
            if (m := _VERSION_RE.match(i.path.rstrip("/").rsplit("/", 1)[-1]))
        ]
        nums += [int(v[1:]) for v in existing]
        return f"v{(max(nums) + 1) if nums else 1:06d}"

    def publish(
        self,
        name: str,
        src_dir: str | Path,
        *,
        metrics: dict | None = None,
        params: dict | None = None,
        lineage: dict | None = None,
        extra: dict | None = None,
        set_latest: bool | None = None,
    ) -> str:
        """Publish the files of local `src_dir` as the next version of `name`; return the version.
        `set_latest` False (default: the registry's `publish_latest`) publishes it without moving
        `latest`: a candidate that serving does not load until it is promoted (recserve.generations)."""
        src_dir = Path(src_dir)
        if not src_dir.is_dir():
            raise RegistryError(f"nothing to publish: {src_dir} is not a directory")
        self.check_writable(name)
        staging = self._p(name, ".staging", uuid.uuid4().hex)
        try:
            self.fs.create_dir(staging, recursive=True)
            for f in sorted(src_dir.rglob("*")):
                if f.is_file() and f.name != MANIFEST:
                    rel = f.relative_to(src_dir).as_posix()
                    if "/" in rel:
                        self.fs.create_dir(staging + "/" + rel.rsplit("/", 1)[0], recursive=True)
                    with open(f, "rb") as src, self.fs.open_output_stream(staging + "/" + rel) as dst:
                        while chunk := src.read(8 << 20):
                            dst.write(chunk)
            files = sorted(
                p.relative_to(src_dir).as_posix() for p in src_dir.rglob("*") if p.is_file() and p.name != MANIFEST
            )
            for _attempt in range(20):
                version = self._next_version(name)
                manifest = {
                    "name": name,
                    "version": version,
                    "created_at": time.time(),
                    "metrics": metrics or {},
                    "params": params or {},
                    "lineage": lineage or {},
                    "files": files,
                    **(extra or {}),
                }
                with self.fs.open_output_stream(staging + "/" + MANIFEST) as fh:
                    fh.write(json.dumps(manifest, indent=2, default=str).encode())
                target = self._p(name, "versions", version)
                self.fs.create_dir(self._p(name, "versions"), recursive=True)
                if self.fs.get_file_info(target).type != pafs.FileType.NotFound:
                    continue  # another job took this number meanwhile
                self.fs.move(staging, target)
                break
            else:
                raise RegistryError(f"could not allocate a version for {name!r} in {self.uri}")
            if self.publish_latest if set_latest is None else set_latest:
                self._set_latest(name, version)
        except OSError as e:
            self._rm(staging)
            raise RegistryError(f"publishing {name!r} to {self.uri} failed ({e}); latest is unchanged") from e
        except BaseException:
            self._rm(staging)
            raise
        self.prune(name)
        return version

    def _set_latest(self, name: str, version: str) -> None:
        tmp = self._p(name, f".latest.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps({"version": version, "at": time.time()}).encode())
        self.fs.move(tmp, self._p(name, "latest"))

    def set_latest(self, name: str, version: str) -> None:
        """Point `latest` at an existing version (a rollback)."""
        self._set_latest(name, self.resolve(name, version))

    def _rm(self, path: str) -> None:
        with contextlib.suppress(OSError, FileNotFoundError):
            self.fs.delete_dir(path)

    def delete_version(self, name: str, version: str) -> None:
        """Remove a version that is not `latest` (a failed retrain's half-made candidate)."""
        if version == self.latest(name):
            raise RegistryError(f"{name} {version} is what `latest` points at; point it elsewhere first")
        self._rm(self._p(name, "versions", version))

    def write_note(self, name: str, version: str, note: dict) -> None:
        """A version's mutable side note (`note.json` beside its immutable manifest: a generation's
        rollout state), replaced atomically."""
        self.resolve(name, version)
        tmp = self._p(name, "versions", version, f".note.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(note, indent=2, default=str).encode())
        self.fs.move(tmp, self._p(name, "versions", version, NOTE))

    def note(self, name: str, version: str) -> dict:
        try:
            with self.fs.open_input_stream(self._p(name, "versions", version, NOTE)) as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return {}

    def prune(self, name: str, protect: set[str] | None = None) -> list[str]:
        vs = self.versions(name)
        latest = self.latest(name)
        keep = {latest, *(protect or ())}
        drop = [v for v in vs[: -self.keep] if v not in keep] if len(vs) > self.keep else []
        for v in drop:
            self._rm(self._p(name, "versions", v))
        return drop

    def list(self) -> dict[str, Any]:
        sel = pafs.FileSelector(self.root, allow_not_found=True)
        out = {}
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.Directory:
                n = info.path.rstrip("/").rsplit("/", 1)[-1]
                out[n] = {"latest": self.latest(n), "versions": self.versions(n)}
        return out
