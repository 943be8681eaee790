"""Benchmark: how much does bench's own measurement cost? (a ratio, measured in one run)

Decode tokens/s as bench reports it (hf-eager backend, harness clock, latency loop) against a
hand-written KV-cache greedy loop timed with two perf_counter calls, on the same model, same
prompt, same thread count, interleaved round by round so machine noise hits both alike.
Run: python -m pytest benchmarks --benchmark-enable -s   (target: ratio >= 0.98)
"""
import time

import torch
from transformers import AutoModelForCausalLM

from backends.hf.eager import HFEager
from bench.core.timing import Clock
from bench.measure.latency import measure, prompt_batch
from bench.models import build_builtin
from bench.models.corpus import heldout_text

NEW_TOKENS, PROMPT_TOKENS, ROUNDS = 64, 64, 30
POLICY = {"warmup": 0, "min": 8, "max": 8, "max_time_s": 60, "ci_target": 1.0, "ci_level": 0.95}


def hand_written_decode_seconds(model, prompt: list[int]) -> float:
    """Greedy decode with the KV cache, no harness: seconds for the NEW_TOKENS - 1 decode steps."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        cache = out.past_key_values
        start = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            cache = out.past_key_values
        return time.perf_counter() - start


def test_bench_decode_throughput_vs_hand_written_loop(benchmark):
    torch.set_num_threads(1)
    path = str(build_builtin("tiny-llama"))
    backend = HFEager(HFEager.Options(), threads=1)
    backend.load(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    prompt = prompt_batch(backend.tokenize(heldout_text()), 1, PROMPT_TOKENS)
    for _ in range(3):  # warm both paths
        hand_written_decode_seconds(model, prompt[0])
        backend.generate(prompt, NEW_TOKENS, lambda: None)

    ratios = []

    def one_round():
        bench_tok_s = measure(backend, prompt, NEW_TOKENS, POLICY, Clock())["decode_tok_s"]
        seconds = [hand_written_decode_seconds(model, prompt[0]) for _ in range(POLICY["max"])]
        hand_tok_s = len(seconds) * (NEW_TOKENS - 1) / sum(seconds)
        ratios.append(bench_tok_s / hand_tok_s)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    ratios.sort()
    median = ratios[len(ratios) // 2]
    benchmark.extra_info.update(ratio_median=median, ratios=ratios, threads=1, new_tokens=NEW_TOKENS)
    print(f"\nbench decode tok/s / hand-written loop tok/s: median {median:.4f} over {len(ratios)} rounds "
          f"(min {ratios[0]:.4f}, max {ratios[-1]:.4f}), 1 thread")
    assert len(ratios) == ROUNDS and all(r > 0 for r in ratios)
