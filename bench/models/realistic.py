"""The built-in `qwen2.5-0.5b-shape`: a model of Qwen2.5-0.5B's exact shape, built offline, for realistic sizes.

Qwen2.5-0.5B's architecture (transformers' `Qwen2Config`: vocabulary 151936, hidden 896, 24 layers, 14
query heads and 2 KV heads of 64, MLP 4864, q/k/v biases, tied embeddings; 494,032,768 parameters) with
Qwen2's real tokenizer, llama.cpp's vocabulary-only `ggml-vocab-qwen2.gguf` from llama-cpp-python's sdist
(backends/gguf/llamacpp_source.py) read by transformers' GGUF loader (bench/models/tokenizer.py), so llama.cpp's
own converter recognises it. Nothing is downloaded from a hub.

The weights are random, not trained: transformers' own initialisation of Qwen2 (`_init_weights`: every
Linear and Embedding weight normal(0, initializer_range = 0.02), biases 0, RMSNorm weights 1), drawn after
`torch.manual_seed(seed)`, created directly in bfloat16 (the dtype Qwen2.5-0.5B ships in) and saved in it.
The same seed gives the same weights with the same torch and transformers versions (recorded). Such a
model is for speed and memory, which depend on the shape and dtype only; its perplexity (about the
vocabulary size) and its top-1 agreement between backends say little.

One copy of the weights is ever held: the model is created in its save dtype (no float32 model cast
afterwards), and saved from it. `build()` records its wall time and the building process's peak RSS
(VmHWM) in `bench_model.json`; built alone (`python -m bench model build qwen2.5-0.5b-shape`) that is
the build's own peak. Cached under `cache_dir()/models/qwen2.5-0.5b-shape-<recipe_hash>`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from bench.models.recipe import ModelRecipe, register, write_record
from bench.models.tokenizer import read_vocab, save_tokenizer

NAME = "qwen2.5-0.5b-shape"
CONTEXT = 32768  # Qwen2.5-0.5B's max_position_embeddings


@dataclasses.dataclass(frozen=True)
class Recipe(ModelRecipe):
    """Everything that determines the built model (besides library versions); defaults: Qwen2.5-0.5B."""

    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    max_position_embeddings: int = CONTEXT
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    dtype: str = "bfloat16"
    seed: int = 0
    vocab: str = "qwen2"  # llama.cpp's ggml-vocab-<vocab>.gguf

    prefix = NAME

    @property
    def context(self) -> int:
        return self.max_position_embeddings

    def build_into(self, out: Path, log: Callable[[str], None]) -> None:
        _build_into(out, self, log)

    def config(self, eos_token_id: int):
        """transformers' Qwen2Config of this shape; `eos_token_id` also serves as bos and pad (as Qwen2.5's)."""
        from transformers import Qwen2Config

        return Qwen2Config(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta}, rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings, initializer_range=self.initializer_range,
            use_sliding_window=False, dtype=self.dtype, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
            pad_token_id=eos_token_id)


def build(force: bool = False, log: Callable[[str], None] = print, recipe: Recipe | None = None) -> Path:
    """Directory of the model for `recipe` (default: Qwen2.5-0.5B's shape), building it if needed."""
    return (recipe or Recipe()).build(force=force, log=log)


def _build_into(out: Path, r: Recipe, log: Callable[[str], None]) -> None:
    import torch
    from transformers import Qwen2ForCausalLM

    from bench.core.process import vm_hwm_bytes

    log(f"building {NAME} {r.recipe_hash()} (Qwen2, hidden {r.hidden_size}, {r.num_layers} layers, "
        f"random init in {r.dtype})")
    t0 = time.perf_counter()
    tokenizer = read_vocab(r.vocab, log)  # not load_vocab's cached copy: that would add an NFC normalizer
    if len(tokenizer) > r.vocab_size:
        raise ValueError(f"the {r.vocab} tokenizer has {len(tokenizer)} tokens, more than vocab_size {r.vocab_size}")
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    config = r.config(eos)  # Qwen2.5's: <|endoftext|>
    torch.manual_seed(r.seed)
    # created in the save dtype: one copy of the weights, initialised by transformers' _init_weights
    model = Qwen2ForCausalLM._from_config(config, dtype=getattr(torch, r.dtype))
    model.eval()
    n_parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    build_seconds = time.perf_counter() - t0
    peak = vm_hwm_bytes()
    del model
    write_record(out, {
        "name": NAME,
        "recipe": dataclasses.asdict(r),
        "recipe_hash": r.recipe_hash(),
        "shape_of": "Qwen/Qwen2.5-0.5B (its config.json's architecture fields; its weights are not used)",
        "weights": (f"random: transformers' Qwen2 _init_weights (Linear/Embedding weights normal(0, "
                    f"{r.initializer_range}), biases 0, RMSNorm weights 1) after torch.manual_seed({r.seed}), created "
                    f"in {r.dtype}; not trained"),
        "tokenizer_source": f"llama.cpp's models/ggml-vocab-{r.vocab}.gguf from llama-cpp-python's sdist, read by "
                            f"transformers' GGUF tokenizer loader ({len(tokenizer)} tokens)",
        "n_parameters": n_parameters,
        "weight_bytes": weight_bytes,
        "tied_embeddings": tied,
        "build_seconds": build_seconds,
        "build_peak_rss_bytes": peak,
        "build_peak_rss_definition": "VmHWM of the building process at the end of the build (its peak RSS since "
                                     "its exec: the build's own when it ran alone)",
    })
    log(f"built {NAME} in {build_seconds:.1f} s: {n_parameters:,} parameters, {weight_bytes / 2**20:.0f} MiB of "
        f"weights, peak RSS {(peak or 0) / 2**20:.0f} MiB")


register(NAME, CONTEXT, Recipe)
