"""A hand-written greedy KV-cache decode loop in its own process: the limit bench's hf-eager case is measured against.

    python benchmarks/raw_decode_loop.py MODEL_DIR PROMPT_TOKENS NEW_TOKENS WARMUP REPETITIONS

Same model, prompt (the first PROMPT_TOKENS of the held-out text, as bench's prompt_batch cuts it), one
thread, eager attention; each repetition times its decode steps (first token available -> last token
available) with perf_counter_ns. Prints one JSON line: decode tokens / decode seconds over the repetitions.
"""
import inspect
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.models.corpus import heldout_text


def main(model_dir: str, prompt_tokens: int, new_tokens: int, warmup: int, repetitions: int) -> dict:
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = AutoTokenizer.from_pretrained(model_dir)(heldout_text(), add_special_tokens=False)["input_ids"]
    prompt = torch.tensor([ids[:prompt_tokens]])

    def decode_ns() -> int:
        with torch.inference_mode():
            out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            first = time.perf_counter_ns()
            for _ in range(new_tokens - 1):
                out = model(input_ids=token, use_cache=True, **{cache_arg: getattr(out, cache_arg)})
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter_ns() - first

    for _ in range(warmup):
        decode_ns()
    total = sum(decode_ns() for _ in range(repetitions))
    return {"decode_tok_s": repetitions * (new_tokens - 1) / (total / 1e9), "repetitions": repetitions}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *map(int, sys.argv[2:6]))))
