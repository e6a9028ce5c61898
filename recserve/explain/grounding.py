"""Grounded prompts and the check of what a generated sentence names: each item's prompt carries
only the facts that ranked it, and `Grounding.check` rejects a sentence naming a catalogue item or
category outside them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from recserve.explain.templates import ranking_facts

# ----------------------------------------------------------------------------- grounding
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_ARTICLE = re.compile(r"^(.*), (the|a|an)$", re.I)
_YEAR = re.compile(r"\s*\(\d{4}(?:[-–]\d{0,4})?\)\s*$")


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def title_forms(title: str) -> list[tuple[str, ...]]:
    """How a sentence may name a catalogue title: without its year, with a trailing article moved to
    the front ("Matrix, The (1999)" -> "the matrix") and without it."""
    t = _YEAR.sub("", title).strip()
    forms = {_words(t)}
    m = _ARTICLE.match(t)
    if m:
        forms |= {_words(f"{m.group(2)} {m.group(1)}"), _words(m.group(1))}
    elif t.lower().startswith(("the ", "a ", "an ")):
        forms.add(_words(t.split(" ", 1)[1]))
    return [f for f in forms if f]


# the words a faithful sentence may use besides the item's title, its facts and the names in them:
# pronouns, articles, connectives and the verbs of recommending; no praise, plot or quality words
CONNECTIVES = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "so",
        "because",
        "since",
        "as",
        "also",
        "too",
        "both",
        "it",
        "its",
        "it's",
        "this",
        "that",
        "these",
        "those",
        "which",
        "who",
        "what",
        "here",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "will",
        "would",
        "can",
        "could",
        "might",
        "may",
        "you",
        "your",
        "you've",
        "you're",
        "yours",
        "we",
        "we're",
        "our",
        "us",
        "i",
        "they",
        "their",
        "them",
        "he",
        "she",
        "his",
        "her",
        "to",
        "of",
        "for",
        "in",
        "on",
        "at",
        "by",
        "from",
        "with",
        "about",
        "into",
        "than",
        "then",
        "just",
        "now",
        "here's",
        "there",
        "there's",
        "recommend",
        "recommended",
        "recommending",
        "recommendation",
        "suggest",
        "suggested",
        "pick",
        "picked",
        "picks",
        "try",
        "like",
        "likes",
        "liked",
        "enjoy",
        "enjoyed",
        "watch",
        "watched",
        "watching",
        "see",
        "seen",
        "saw",
        "look",
        "looked",
        "looking",
        "check",
        "out",
        "one",
    ]
)  # claim words ("often", "together", "similar", "trending", "new", "taste") only from the facts


def display_title(title: str) -> str:
    """A catalogue title as a sentence would name it: "Bug's Life, A (1998)" -> "A Bug's Life"."""
    t = _YEAR.sub("", title).strip()
    m = _ARTICLE.match(t)
    return f"{m.group(2)} {m.group(1)}" if m else t


def lexical_check(text: str, facts: list[str], names: list[str]) -> tuple[bool, str]:
    """(ok, why not): every word of the sentence comes from the item's facts, the names it was
    given (title, category, the similar item) or CONNECTIVES; anything else ("classic", "praised",
    "storytelling", "game") is a claim the facts do not hold. And at least one of its words is
    the facts' or the names' own (connectives alone say nothing)."""
    own: set[str] = set()
    for t in list(facts) + list(names):
        own |= set(_words(t))
    vocab = CONNECTIVES | own | {w for t in list(facts) + list(names) for f in title_forms(t) for w in f}
    words = _words(text)
    extra = [w for w in words if w not in vocab and w.rstrip("s") not in vocab and w + "s" not in vocab]
    if extra:
        return False, "adds " + ", ".join(dict.fromkeys(extra))
    if not set(words) & (own - CONNECTIVES):
        return False, "mentions neither the item nor its facts"
    return True, ""


@dataclass
class Grounding:
    """The catalogue's names (item titles, categories) as word sequences: what a sentence could
    name. A sentence passes when every catalogue name it contains is among the item's facts and,
    with `lexical` (a real model: explainer.faithful), when every word comes from its facts, its
    names or CONNECTIVES (lexical_check)."""

    terms: set[tuple[str, ...]] = field(default_factory=set)
    max_len: int = 1
    lexical: bool = False

    @classmethod
    def from_catalogue(cls, titles: list[str], categories: list[str]) -> Grounding:
        terms: set[tuple[str, ...]] = set()
        for c in categories:
            if c and _words(c):
                terms.add(_words(c))
        for t in titles:
            for f in title_forms(str(t)):
                # a one-word title shorter than 4 letters ("Up", "It") is too common a word to police
                if len(f) > 1 or len(f[0]) >= 4:
                    terms.add(f)
        return cls(terms, max((len(t) for t in terms), default=1))

    def mentions(self, text: str) -> list[tuple[str, ...]]:
        """Catalogue names in `text`, longest first, none inside another that was found."""
        w = _words(text)
        taken = [False] * len(w)
        found = []
        for n in range(min(self.max_len, len(w)), 0, -1):
            for i in range(len(w) - n + 1):
                if any(taken[i : i + n]):
                    continue
                if w[i : i + n] in self.terms:
                    found.append(w[i : i + n])
                    for j in range(i, i + n):
                        taken[j] = True
        return found

    def check(self, text: str, allowed: list[str], facts: list[str] | None = None) -> tuple[bool, str]:
        """(ok, why not): a non-empty sentence naming only `allowed` catalogue names (and no item
        number it was not given); with `lexical` and the item's `facts`: a finished sentence that
        names the item or one of its facts and uses only their words (lexical_check)."""
        if not _words(text):
            return False, "empty"
        ok_terms: set[tuple[str, ...]] = set()
        for a in allowed:
            ok_terms |= set(title_forms(a)) | {_words(a)}
        extra = [m for m in self.mentions(text) if m not in ok_terms and not any(_contains(a, m) for a in ok_terms)]
        if extra:
            return False, "names " + ", ".join(" ".join(m) for m in extra)
        for num in re.findall(r"(?:item|#)\s*(\d+)", text.lower()):
            if not any(num in _words(a) for a in allowed):
                return False, f"names item {num}"
        if self.lexical and facts is not None:
            if not re.search(r"[.!?][\"')]?$", text.strip()):
                return False, "unfinished: cut off before its end (max_new_tokens, or a generation stopped)"
            return lexical_check(text, facts, allowed)
        return True, ""


def _contains(big: tuple[str, ...], small: tuple[str, ...]) -> bool:
    n = len(small)
    return any(big[i : i + n] == small for i in range(len(big) - n + 1))


PROMPT_FACTS = {
    "session_category": "the user has been looking at {category}",
    "history_category": "the user often chooses {category}",
    "covisit": "it is often viewed together with items the user just saw",
    "trending": "it is trending now",
    "explored": "it is something new, shown to explore the user's taste",
}


def grounded_facts(signal: dict) -> list[str]:
    """The facts that ranked one item, in words (the template reasons' facts, recserve.serving.recommender.
    ranking_facts, plus the similar item the user just saw)."""
    cat = signal.get("category") or ""
    keys = [k for k in ranking_facts(signal) if cat or not k.endswith("_category")]
    n_cat = sum(k.endswith("_category") for k in keys)  # the category fact comes first
    facts = [PROMPT_FACTS[k].format(category=cat) for k in keys[:n_cat]]
    facts += [
        f"it is similar to {display_title(s['title'])}, which the user just saw"
        for s in signal.get("similar_seen") or []
    ]
    facts += [PROMPT_FACTS[k].format(category=cat) for k in keys[n_cat:]]
    return facts or ["it matches the user's taste"]


def allowed_names(signal: dict) -> list[str]:
    out = [signal.get("title") or "", signal.get("category") or ""]
    out += [s["title"] for s in signal.get("similar_seen") or []]
    return [x for x in out if x]


SYSTEM = (
    "You explain a recommendation to a user in one short sentence. Use only the facts given; "
    "add no praise, plot, quality or other claims."
)
FEW_SHOT = [
    (
        "Item: Heat (Action). Facts: the user has been looking at Action; it is trending now.",
        "We recommend Heat because you have been looking at Action, and it is trending now.",
    ),
    (
        "Item: Toy Story (Animation). Facts: it is similar to A Bug's Life, which the user just saw.",
        "Toy Story is similar to A Bug's Life, which you just saw.",
    ),
    (
        "Item: Casino (Crime). Facts: the user often chooses Crime; it is often viewed together with items the "
        "user just saw.",
        "You often choose Crime, and Casino is often viewed together with what you just saw.",
    ),
]


def chat_item(signal: dict) -> str:
    """One item as a chat model's user turn: its title, category and the facts that ranked it."""
    title = display_title(signal.get("title") or "") or f"item {signal['item_id']}"
    cat = signal.get("category") or "its category"
    return f"Item: {title} ({cat}). Facts: {'; '.join(grounded_facts(signal))}."


def chat_messages(item_turn: str) -> list[dict]:
    """The system rule, the few-shot turns (facts-only, one sentence each) and the item's turn."""
    msgs = [{"role": "system", "content": SYSTEM}]
    for q, a in FEW_SHOT:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": item_turn}]


def prompt_for(signal: dict) -> str:
    title = signal.get("title") or f"item {signal['item_id']}"
    cat = signal.get("category") or "its category"
    return (
        f"Write one short sentence telling a user why we recommend {title} ({cat}). "
        f"Use only these facts: {'; '.join(grounded_facts(signal))}.\nSentence:"
    )


def first_sentence(text: str, limit: int = 240) -> str:
    text = text.strip().split("\n", 1)[0].strip()
    m = re.search(r"[.!?](\s|$)", text)
    if m:
        text = text[: m.end()].strip()
    return text[:limit].strip()
