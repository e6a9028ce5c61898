"""Ray job: a backup of the stack's state (see recserve.ops.backup).

ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m pipelines.backup --to /backups
"""

from __future__ import annotations

import argparse
import json

from recserve.config import load_config
from recserve.ops.backup import backup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", required=True, help="local folder or pyarrow.fs URI")
    p.add_argument("--keep", type=int, default=24)
    p.add_argument("--config", default=None)
    a = p.parse_args()
    res = backup(load_config(a.config), a.to, keep=a.keep, log=lambda m: print(f"[backup] {m}", flush=True))
    print(json.dumps({k: v for k, v in res.items() if k != "files"}))


if __name__ == "__main__":
    main()
