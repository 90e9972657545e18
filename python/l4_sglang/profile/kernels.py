"""Kernel timings with the kernels SGLang runs, on random data (needs a GPU).

Per layer of a Llama-3-8B-shaped model (32 query heads, 8 KV heads, head
dim 128, bf16): decode attention of homogeneous and mixed-length batches
(FlashInfer's paged decode with tensor cores, SGLang's pick for GQA >= 4,
and PyTorch's FlashAttention-2 varlen), causal prefill attention, and the
linear layers for a range of token counts. Every failure is recorded in
the result instead of ending the run.
"""

from __future__ import annotations

import traceback

import torch

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
HIDDEN, INTERMEDIATE, VOCAB, LAYERS = 4096, 14336, 128256, 32
DTYPE = torch.bfloat16


def _bench(fn) -> float:
    """Median seconds of `fn` with CUDA events (triton's do_bench when present)."""
    try:
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=150, return_mode="median") / 1e3
    except ImportError:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(5):
            fn()
        times = []
        for _ in range(30):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return sorted(times)[len(times) // 2]


DECODE_MIXES: list[tuple[str, list[int]]] = [
    ("64x4096", [4096] * 64),
    ("1x131072+63x2048", [131072] + [2048] * 63),
    ("1x235520+63x512", [235520] + [512] * 63),
    ("64x1024", [1024] * 64),
    ("16x16384", [16384] * 16),
    ("4x16384+60x1024", [16384] * 4 + [1024] * 60),
    ("1x65536+127x1024", [65536] + [1024] * 127),
    ("128x2048", [2048] * 128),
    ("8x2048", [2048] * 8),
    ("1x8192", [8192]),
    ("256x512", [512] * 256),
    ("32x8192", [8192] * 32),
]


def flashinfer_decode(contexts: list[int], workspace: torch.Tensor) -> float:
    import flashinfer

    total = sum(contexts)
    kv = torch.randn(total, 2, 1, KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    indptr = torch.tensor([0, *torch.tensor(contexts).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    indices = torch.arange(total, dtype=torch.int32, device="cuda")
    last = torch.ones(len(contexts), dtype=torch.int32, device="cuda")
    q = torch.randn(len(contexts), HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
    try:
        wrapper.plan(
            indptr, indices, last, HEADS, KV_HEADS, HEAD_DIM, 1, q_data_type=DTYPE, kv_data_type=DTYPE
        )
    except TypeError:
        wrapper.plan(indptr, indices, last, HEADS, KV_HEADS, HEAD_DIM, 1, data_type=DTYPE)
    return _bench(lambda: wrapper.run(q, kv))


def fa2_varlen_decode(contexts: list[int]) -> float:
    total = sum(contexts)
    n = len(contexts)
    k = torch.randn(total, KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    v = torch.randn_like(k)
    # GQA through repeated KV heads, as a varlen kernel without GQA support would need.
    k, v = k.repeat_interleave(HEADS // KV_HEADS, dim=1), v.repeat_interleave(HEADS // KV_HEADS, dim=1)
    q = torch.randn(n, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    cu_q = torch.arange(n + 1, dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, *torch.tensor(contexts).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    op = torch.ops.aten._flash_attention_forward
    return _bench(lambda: op(q, k, v, cu_q, cu_k, 1, max(contexts), 0.0, False, False, scale=HEAD_DIM**-0.5))


def flashinfer_prefill(length: int, workspace: torch.Tensor) -> float:
    import flashinfer

    q = torch.randn(length, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    k = torch.randn(length, KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    v = torch.randn_like(k)
    indptr = torch.tensor([0, length], dtype=torch.int32, device="cuda")
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
    try:
        wrapper.plan(
            indptr, indptr, HEADS, KV_HEADS, HEAD_DIM, causal=True, q_data_type=DTYPE, kv_data_type=DTYPE
        )
    except TypeError:
        wrapper.plan(indptr, indptr, HEADS, KV_HEADS, HEAD_DIM, causal=True)
    return _bench(lambda: wrapper.run(q, k, v))


def linear_layers(tokens: int) -> float:
    """One transformer layer's matmuls plus 1/LAYERS of the LM head, so x LAYERS is the model."""
    x = torch.randn(tokens, HIDDEN, dtype=DTYPE, device="cuda")
    qkv = torch.randn(HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=DTYPE, device="cuda")
    o = torch.randn(HIDDEN, HIDDEN, dtype=DTYPE, device="cuda")
    gate_up = torch.randn(HIDDEN, 2 * INTERMEDIATE, dtype=DTYPE, device="cuda")
    down = torch.randn(INTERMEDIATE, HIDDEN, dtype=DTYPE, device="cuda")
    head = torch.randn(HIDDEN, VOCAB, dtype=DTYPE, device="cuda")
    mid = torch.randn(tokens, INTERMEDIATE, dtype=DTYPE, device="cuda")

    def layer():
        x @ qkv
        x @ o
        x @ gate_up
        mid @ down

    per_layer = _bench(layer)
    lm_head = _bench(lambda: x[-min(tokens, 256) :] @ head)
    return per_layer + lm_head / LAYERS


def run_all() -> dict:
    out: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "layers": LAYERS,
        "decode": [],
        "prefill": [],
        "linear": [],
        "errors": [],
    }
    try:
        import flashinfer

        out["flashinfer"] = getattr(flashinfer, "__version__", "?")
    except Exception as e:
        out["errors"].append(f"import flashinfer: {e!r}")
    workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    for name, contexts in DECODE_MIXES:
        for kernel, fn in (
            ("flashinfer_tc", lambda c=contexts: flashinfer_decode(c, workspace)),
            ("fa2_varlen", lambda c=contexts: fa2_varlen_decode(c)),
        ):
            try:
                seconds = fn()
                out["decode"].append({"mix": name, "kernel": kernel, "contexts": contexts, "s": seconds})
                print(f"decode {kernel:14s} {name:20s} {seconds * 1e3:8.3f} ms/layer", flush=True)
            except Exception:
                out["errors"].append(f"decode {kernel} {name}: {traceback.format_exc(limit=3)}")
            torch.cuda.empty_cache()
    for length in (1024, 4096, 8192, 16384, 32768):
        try:
            seconds = flashinfer_prefill(length, workspace)
            out["prefill"].append({"kernel": "flashinfer", "q": length, "kv": length, "s": seconds})
            print(f"prefill flashinfer q=kv={length:6d} {seconds * 1e3:8.3f} ms/layer", flush=True)
        except Exception:
            out["errors"].append(f"prefill {length}: {traceback.format_exc(limit=3)}")
    for tokens in (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
        try:
            seconds = linear_layers(tokens)
            out["linear"].append({"tokens": tokens, "s": seconds})
            print(f"linear tokens={tokens:5d} {seconds * 1e3 * LAYERS:8.3f} ms/model", flush=True)
        except Exception:
            out["errors"].append(f"linear {tokens}: {traceback.format_exc(limit=3)}")
    return out
