"""Every Redis key name lives in recserve/keys.py: the names are the documented ones, and no other
module spells a key itself."""

import re
from pathlib import Path

from recserve import keys

ROOT = Path(__file__).resolve().parents[2]


def test_key_names():
    assert keys.event_stream(3) == "events:3" and keys.event_seen() == "events:seen:"
    assert keys.committed_offset(2) == "st:off:2" and keys.committed_count(2) == "st:done:2"
    assert keys.context(42) == "st:ctx:42" and keys.context(42, "t1") == "t1:ctx:42"
    assert keys.window("item", "1h", 7) == "st:item:1h:7" and keys.trend(9) == "st:trend:9"
    assert keys.assignment("agg-0") == "st:assign:agg-0" and keys.invalidate_channel() == "st:invalidate"
    assert keys.invalidate_channel(db=3) == "st:invalidate:db3"  # pub/sub is server-wide: one per database
    assert keys.bandit_params() == "bandit:params" and keys.bandit_impressions("b") == "b:impressions"
    assert keys.REGION_DRAIN == "region:drain"


def test_no_module_spells_a_key_itself():
    spelled = re.compile(
        r"""f?["'](st|events|bandit|region):|\{[a-z_.]*prefix\}:|["']:(ctx|off|done|seen|params|impressions|assign):"""
    )
    offenders = []
    for d in ("recserve", "actors", "deployments", "pipelines"):
        for f in (ROOT / d).rglob("*.py"):
            if f.name == "keys.py":
                continue
            for n, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if spelled.search(code):
                    offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
