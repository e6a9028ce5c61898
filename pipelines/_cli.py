"""Shared command-line plumbing of the Ray jobs: arguments every job takes, and error reporting
(a clear message and a non-zero exit, never a traceback, for bad input)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from recserve.config import ConfigError, load_config
from recserve.lake.layout import LakeError
from recserve.registry import Registry, RegistryError
from recserve.schemas import DataError

USER_ERRORS = (ConfigError, DataError, RegistryError, LakeError, FileNotFoundError, ValueError, PermissionError)


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m pipelines.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Runs locally, or on a cluster with:\n  ray job submit --address "
        "http://127.0.0.1:8265 --working-dir . -- python -m pipelines." + name + " ...",
    )
    p.add_argument("--config", help="recserve.yaml to use (default: ./recserve.yaml or $RECSERVE_CONFIG)")
    p.add_argument("--registry", help="registry path or pyarrow.fs URI (default: config registry.uri)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set embeddings.epochs=5 (repeatable)",
    )
    return p


def dataset_args(p: argparse.ArgumentParser) -> None:
    """--dataset DIR, or --lake [URI] with --window-days: what a job trains on."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dataset", help="dataset directory (generate_world / import_movielens / import_data)")
    g.add_argument(
        "--lake",
        nargs="?",
        const="",
        metavar="URI",
        help="train on the lake (the system's own traffic; default: the config's lake.uri), written out as a "
        "dataset directory first",
    )
    p.add_argument("--window-days", type=float, help="with --lake: only its last N days (default: all of it)")


def dataset_of(args, cfg, reg) -> str:
    """The dataset directory a job trains on: --dataset, or the lake's window exported."""
    if getattr(args, "lake", None) is None:
        if getattr(args, "window_days", None) is not None:
            raise ValueError("--window-days goes with --lake")
        return args.dataset
    from recserve.offline.jobs.lake import lake_dataset

    return str(lake_dataset(cfg, reg, args.window_days, lake_uri=args.lake or None))


def setup(args):
    overrides = {}
    for kv in args.set:
        if "=" not in kv:
            raise ConfigError(f"--set {kv!r}: expected KEY=VALUE, e.g. --set embeddings.epochs=5")
        k, v = kv.split("=", 1)
        overrides[k.strip()] = v
    cfg = load_config(args.config, overrides=overrides)
    reg = Registry(args.registry or cfg.registry_uri, cfg.registry.keep)
    return cfg, reg


def run(main: Callable[[], object]) -> None:
    try:
        result = main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: nothing was published", file=sys.stderr)
        sys.exit(130)
    if result is not None:
        print(json.dumps(result, default=str))
