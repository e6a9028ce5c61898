"""Template reasons: what an item is explained with when no LLM writes its sentence (the
templates backend, a slow or failing explainer). The facts come from the signals that ranked the
item; `ranking_facts` is the one set of thresholds the templates and the LLM's grounded prompts
(recserve.explain.grounding) share."""

from __future__ import annotations


def ranking_facts(signal: dict) -> list[str]:
    """Which of the signals that ranked an item explain it, by name: "session_category" or
    "history_category", "covisit", "trending", "explored"."""
    f = signal["features"]
    out = []
    if f.get("session_cat_share", 0) >= 0.2:
        out.append("session_category")
    elif f.get("history_cat_share", 0) >= 0.2:
        out.append("history_category")
    if f.get("covisit", 0) > 0.5:
        out.append("covisit")
    if f.get("log_trending", 0) >= 2.0:
        out.append("trending")
    if signal.get("explored"):
        out.append("explored")
    return out


TEMPLATE_REASONS = {
    "session_category": "you have been looking at {category}",
    "history_category": "you often choose {category}",
    "covisit": "often viewed with items you just saw",
    "trending": "trending now",
    "explored": "something new for you",
}
POPULAR_REASON = "popular right now"
SIMILAR_REASON = "like {title}, which you just saw"


def template_reasons_from(signal: dict) -> list[str]:
    """Reasons from the signals that ranked the item: `signal` is one entry of
    `Recommender.signals` (features by name, category, explored, the item just seen that it is
    most like, which the reasons name first)."""
    from recserve.explain.grounding import display_title

    out = [
        SIMILAR_REASON.format(title=display_title(s["title"]))
        for s in signal.get("similar_seen") or []
        if s.get("title")
    ]
    out += [TEMPLATE_REASONS[k].format(category=signal["category"]) for k in ranking_facts(signal)]
    return out or ["matches your taste"]
