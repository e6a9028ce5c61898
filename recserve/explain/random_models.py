"""Causal language models with random weights, built from a config, for tests and benchmarks where
no weights can be downloaded: a word-level tokenizer over the words the explainer will see (the
prompt's words and the catalogue's names) and a Llama-architecture model of a chosen size.

Sizes: `tiny` (tests, ~0.1M parameters), `small` (~10M, CPU benchmarks) and `0.5b` (Qwen2-0.5B's
shape: 24 layers of 896, vocabulary 151,936, ~0.5B parameters, for GPU timings). Random weights
write random words: the timings are real, the sentences are not (the grounding check rejects most).
"""

from __future__ import annotations

from pathlib import Path

SIZES = {
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=None,
    ),
    "small": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=8192,
    ),
    # SmolLM2-135M-Instruct's shape (the real explainer model): its timings on a machine its weights cannot reach
    "smollm2": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49_152,
        tie_word_embeddings=True,
    ),
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151_936,
        tie_word_embeddings=True,
    ),
}
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
PROMPT_WORDS = [
    "write",
    "one",
    "short",
    "sentence",
    "telling",
    "a",
    "user",
    "why",
    "we",
    "recommend",
    "use",
    "only",
    "these",
    "facts",
    "the",
    "has",
    "been",
    "looking",
    "at",
    "often",
    "chooses",
    "it",
    "is",
    "similar",
    "to",
    "which",
    "just",
    "saw",
    "viewed",
    "together",
    "with",
    "items",
    "trending",
    "now",
    "something",
    "new",
    "shown",
    "explore",
    "user's",
    "taste",
    "matches",
    "its",
    "category",
    "you",
    "because",
    "and",
    "this",
]


MARKER = "recserve_random_model.txt"  # in a built model's directory: its sentences mean nothing


def vocabulary(words: list[str] | None = None, size: int | None = None) -> list[str]:
    """Specials, the prompt's words, `words` (lower-cased, deduplicated), padded to `size`."""
    seen, out = set(), []
    for w in SPECIALS + PROMPT_WORDS + [x.lower() for x in (words or [])]:
        if w and w not in seen:
            seen.add(w)
            out.append(w)
    if size is not None:
        if len(out) > size:
            out = out[:size]
        out += [f"w{i}" for i in range(size - len(out))]
    return out


def catalogue_words(titles: list[str], categories: list[str]) -> list[str]:
    import re

    words = []
    for t in list(categories) + list(titles):
        words += re.findall(r"[a-z0-9]+(?:'[a-z]+)?", str(t).lower())
    return words


def build_random_model(out: str | Path, size: str = "tiny", words: list[str] | None = None, seed: int = 0) -> Path:
    """Write a tokenizer and a random-weights model under `out` (loadable with from_pretrained,
    local_files_only). Returns the directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}: one of {', '.join(SIZES)}")
    spec = dict(SIZES[size])
    vocab = vocabulary(words, spec.pop("vocab_size"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab), max_position_embeddings=512, pad_token_id=0, bos_token_id=2, eos_token_id=3, **spec
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    (Path(out) / MARKER).write_text("random weights (recserve.explain.random_models): fluent nonsense, for timings\n")
    return out


def force_word(model_dir: str | Path, word: str) -> None:
    """Rewrite a built model so that it writes `word` at every step, whatever the prompt: every
    token embeds to one vector, the attention and MLP outputs are zero (the residual stream holds
    that vector alone) and only `word`'s output row reads it. A deterministic model, for tests of
    what the explainer does with a given output."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    wid = tok.convert_tokens_to_ids(word.lower())
    if wid == tok.unk_token_id:
        raise ValueError(f"{word!r} is not in the model's vocabulary")
    m = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        emb = m.get_input_embeddings().weight
        emb[:] = torch.ones(emb.shape[1])
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = m.get_output_embeddings().weight
        if head.data_ptr() == emb.data_ptr():
            raise ValueError("force_word needs untied input and output embeddings (tiny/small sizes)")
        head.zero_()
        head[wid] = 10.0
    m.save_pretrained(model_dir)
