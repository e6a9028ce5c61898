"""`recserve keys ...`: API keys for the HTTP API (recserve.auth). Keys live hashed in the
application's Redis; a key is printed once, when it is created."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from recserve.cli.main import ConfigOpt, _cfg, _fail, _redis, app, console

keys_app = typer.Typer(
    no_args_is_help=True,
    help="API keys: create (printed once), list, revoke. Scopes: recommend, "
    "events, feedback, catalogue, admin (admin holds every other).",
)
app.add_typer(keys_app, name="keys")


def _store(config):
    from recserve.auth import KeyStore

    return KeyStore(_redis(_cfg(config), "keys"))


@keys_app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="who uses the key (a service, a team)"),
    scopes: str = typer.Option(..., "--scopes", help="comma-separated: recommend,events,feedback,catalogue,admin"),
    quota: list[str] | None = typer.Option(
        None, "--quota", help="SCOPE=RATE[/BURST] requests per second for this key (repeatable); default auth.quotas"
    ),
    as_json: bool = typer.Option(False, "--json", help="print {id, key} as JSON"),
    config: Path | None = ConfigOpt,
):
    """Create a key and print it (this once: only its hash is kept)."""
    from recserve.auth import AuthError, parse_quota

    try:
        q = parse_quota(quota or [])
        kid, key = _store(config).create(name, scopes, q)
    except AuthError as e:
        _fail(e)
    if as_json:
        print(json.dumps({"id": kid, "key": key}))
        return
    console.print(f"key {kid} ({name}, scopes {scopes}): shown this once, keep it secret:")
    print(key)


@keys_app.command("list")
def list_keys(config: Path | None = ConfigOpt, as_json: bool = typer.Option(False, "--json")):
    """Every key: id, name, scopes, quota overrides, created, revoked (never the key itself)."""
    import time

    keys = _store(config).list()
    if as_json:
        print(json.dumps(keys))
        return
    t = Table("id", "name", "scopes", "quota", "created", "revoked")
    fmt = lambda ts: time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else ""  # noqa: E731
    for k in keys:
        t.add_row(
            k["id"],
            k["name"],
            ",".join(k["scopes"]),
            json.dumps(k["quota"]) if k["quota"] else "",
            fmt(k["created"]),
            fmt(k["revoked"]),
        )
    console.print(t)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="the key's id (`recserve keys list`)"), config: Path | None = ConfigOpt
):
    """Revoke a key: every ingress replica refuses it within about a second."""
    if not _store(config).revoke(key_id):
        _fail(KeyError(f"no key {key_id!r}: `recserve keys list` shows the ids"))
    console.print(f"key {key_id} revoked")
