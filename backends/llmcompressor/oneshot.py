"""The llm-compressor job: one `oneshot` call that writes a compressed-tensors checkpoint.

Run by `checkpoint.py` as `python -m backends.llmcompressor.oneshot SPEC.json` in the `llmcompressor`
side environment (llm-compressor pins a transformers older than bench's). SPEC names the source model
directory, the output directory, the modifier (GPTQModifier, AWQModifier) with its scheme, the
device, the thread count and the calibration token ids (a JSON file). Only third-party imports: this
module runs in that interpreter alone.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def run(spec: dict) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers import awq, quantization

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    modifiers = {"GPTQModifier": quantization.GPTQModifier, "AWQModifier": awq.AWQModifier}
    calibration = json.loads(Path(spec["calibration"]).read_text())
    rows = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration["ids"]]
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["source"], dtype=torch.float32)
    model.to(spec["device"])
    recipe = modifiers[spec["modifier"]](targets="Linear", scheme=spec["scheme"], ignore=["lm_head"])
    started = time.perf_counter()
    oneshot(model=model, dataset=Dataset.from_list(rows), recipe=recipe, num_calibration_samples=len(rows),
            max_seq_length=max(len(ids) for ids in calibration["ids"]))
    seconds = time.perf_counter() - started
    out = Path(spec["out"])
    model.save_pretrained(out, save_compressed=True)
    for name in TOKENIZER_FILES:  # copied as they are: transformers 5 rewrites tokenizer_class when saving
        if (Path(spec["source"]) / name).is_file():
            shutil.copy2(Path(spec["source"]) / name, out / name)
    return {"oneshot_seconds": seconds, "recipe": str(recipe)}


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(run(job)))
