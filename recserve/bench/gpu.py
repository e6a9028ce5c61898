"""`scripts/gpu_check.sh` runs this on a GPU machine: what the GPU paths do there, as JSON.

env       torch, CUDA, the GPU
ranker    the served ranker (recserve.ranking.ranker.ServingRanker) scoring 16 lists of 200
          candidates per call: CUDA in float32, float16 and bfloat16, and on the CPU (the fused
          numpy pass and INT8) for comparison; ms per call (median of 200) and the largest score
          difference from float32
explain   `recserve bench explain` on CUDA (transformers in bfloat16; vLLM where it imports) with
          the given model, else a random-weights 0.5B Llama (its timings real, its words not)
faiss     whether faiss imports with GPU support (faiss-gpu), and a flat index search if so
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _ms(fn, n: int = 200) -> float:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return round(float(np.median(ts)), 4)


def ranker(lists: int = 16, candidates: int = 200) -> dict:
    import torch

    from recserve.ranking.features import FEATURE_NAMES
    from recserve.ranking.ranker import RankerNet, ServingRanker, save_model

    torch.manual_seed(0)
    net = RankerNet(len(FEATURE_NAMES), 64, members=4)
    tmp = tempfile.mkdtemp()
    path = Path(tmp) / "ranker.pt"
    save_model(net, path, {"features": FEATURE_NAMES})
    rng = np.random.default_rng(0)
    batch = [rng.standard_normal((candidates, len(FEATURE_NAMES))).astype(np.float32) for _ in range(lists)]
    out: dict = {"lists_per_call": lists, "candidates_per_list": candidates, "members": 4, "hidden": 64}
    ref = None
    cases = [("cpu_fused", "cpu", {}), ("cpu_int8", "cpu", {"quantize": True})]
    if torch.cuda.is_available():
        cases = [
            ("cuda_float32", "cuda", {}),
            ("cuda_float16", "cuda", {"dtype": "float16"}),
            ("cuda_bfloat16", "cuda", {"dtype": "bfloat16"}),
        ] + cases
    for name, device, extra in cases:
        r = ServingRanker({"model_path": str(path), "version": "gpu-check", **extra}, device=device)
        scores = np.concatenate([s for s, _ in r.score_lists(batch)])
        ref = scores if ref is None else ref
        out[name] = {
            "ms_per_call": _ms(lambda r=r: r.score_lists(batch), 200 if device != "cpu" else 50),
            "max_abs_diff_vs_first": round(float(np.abs(scores - ref).max()), 5),
        }
    return out


def faiss_check() -> dict:
    try:
        import faiss
    except Exception as e:  # noqa: BLE001
        return {"available": False, "why": f"faiss does not import here ({type(e).__name__})"}
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if not n_gpus:
        return {"available": False, "why": "faiss imports but has no GPU support (faiss-cpu)"}
    d, n = 128, 1_000_000
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(res, d)
    index.add(x)
    q = x[:1024]
    return {
        "available": True,
        "gpus": n_gpus,
        "vectors": n,
        "dim": d,
        "ms_per_1024_queries_top100": _ms(lambda: index.search(q, 100), 20),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a folder for gpu_check.json and explain-gpu.json")
    p.add_argument("--model", default=None, help="the explainer's model (default: a random-weights 0.5B Llama)")
    p.add_argument("--requests", type=int, default=50)
    p.add_argument(
        "--size",
        default="0.5b",
        help="the random-weights model's shape without --model: 0.5b, smollm2 (the real explainer's), small, tiny",
    )
    a = p.parse_args()
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "env": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    }
    for name, fn in (("ranker", ranker), ("faiss", faiss_check)):
        t = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as e:  # noqa: BLE001 - one part failing must not hide the others
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        res[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(name, json.dumps(res[name]), flush=True)
    try:
        from recserve.bench.explain import run

        ex = run(
            ["transformers", "vllm"],
            a.model,
            None if a.model else a.size,
            "cuda",
            a.requests,
            4,
            32,
            300.0,
            out / f"explain-gpu-{a.size if not a.model else 'model'}.json",
            log=lambda m: print(m, flush=True),
        )
        res["explain"] = {k: v for k, v in ex.items() if k != "backends"}
        res["explain"]["backends"] = ex["backends"]
    except Exception as e:  # noqa: BLE001
        res["explain"] = {"error": f"{type(e).__name__}: {e}"}
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "explain"}), flush=True)


if __name__ == "__main__":
    main()
