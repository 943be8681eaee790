"""The built-in `tiny-llama` model: a small Llama trained offline, deterministically, on stdlib docstrings.

Its recipe (`Recipe`, bench/models/recipe.py) trains a byte-level BPE tokenizer and a 2-layer Llama on the
corpus train split (fixed seed, step count and thread count, bench/models/training.py), measures
held-out perplexity and saves everything to `cache_dir()/models/tiny-llama-<recipe_hash>`. Later builds
return the cached directory. The tiny-llama variants (tiny_variants.py) are this recipe with one field changed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.models import corpus as corpus_source
from bench.models.recipe import ModelRecipe, register, write_record
from bench.models.tokenizer import save_tokenizer
from bench.models.training import Training, fit

NAME = "tiny-llama"
EOS = "<|endoftext|>"
CONTEXT = 1024  # max_position_embeddings of the recipe below


@dataclasses.dataclass(frozen=True)
class Recipe(ModelRecipe):
    """Everything that determines the built model (besides library versions)."""

    corpus_sha256: str
    seed: int = 0
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = CONTEXT
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    seq_len: int = 256
    batch_size: int = 2  # at a fixed token budget, more small steps beat fewer big ones
    steps: int = 700  # ~60 s build on 1 core of this machine
    lr: float = 7e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 70
    schedule: str = "linear-warmup-cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # 1 thread: ~7k tokens/s whatever else runs; 2 threads: ~11k alone, 1-3k on a busy machine
    train_threads: int = 1
    # attention over the last N tokens only (Mistral's architecture: Llama's plus the window); None: full
    sliding_window: int | None = None

    prefix = NAME

    @property
    def context(self) -> int:
        return self.max_position_embeddings

    def hash_fields(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        if fields["sliding_window"] is None:  # added later: a recipe without it keeps the hash (and build) it had
            del fields["sliding_window"]
        return fields

    def training(self) -> Training:
        return Training(seed=self.seed, seq_len=self.seq_len, batch_size=self.batch_size, steps=self.steps,
                        lr=self.lr, warmup_steps=self.warmup_steps, train_threads=self.train_threads,
                        min_lr_ratio=self.min_lr_ratio, weight_decay=self.weight_decay, betas=self.betas,
                        grad_clip=self.grad_clip)

    def build_into(self, out: Path, log: Callable[[str], None]) -> None:
        _build_into(out, self, log)


def default_recipe() -> Recipe:
    return Recipe(corpus_sha256=corpus_source.load_corpus().sha256)


def build(force: bool = False, log: Callable[[str], None] = print, recipe: Recipe | None = None) -> Path:
    """Directory of the tiny-llama model for `recipe` (default recipe if None), building it if needed."""
    return (recipe or default_recipe()).build(force=force, log=log)


def train_tokenizer(text: str, vocab_size: int, model_max_length: int):
    """Byte-level BPE trained on `text`, wrapped as a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **special)


def model_config(r: Recipe, eos_id: int) -> tuple[Any, Any]:
    """(transformers config, model class) of the recipe's architecture, before training."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    shape: dict[str, Any] = {
        "vocab_size": r.vocab_size,
        "hidden_size": r.hidden_size,
        "intermediate_size": r.intermediate_size,
        "num_hidden_layers": r.num_layers,
        "num_attention_heads": r.num_heads,
        "num_key_value_heads": r.num_kv_heads,
        "max_position_embeddings": r.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": r.rope_theta},
        "tie_word_embeddings": r.tie_word_embeddings,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "dtype": "float32",
    }
    if r.sliding_window is None:
        return LlamaConfig(**shape), LlamaForCausalLM
    # a sliding window: Mistral's architecture, which is Llama's plus the window
    return MistralConfig(**shape, sliding_window=r.sliding_window), MistralForCausalLM


def _build_into(out: Path, r: Recipe, log: Callable[[str], None]) -> None:
    import torch

    log(f"building tiny-llama {r.recipe_hash()} ({r.steps} steps, {r.train_threads} thread(s))")
    t0 = time.perf_counter()
    corpus = corpus_source.load_corpus()
    if corpus.sha256 != r.corpus_sha256:
        raise ValueError(f"corpus sha256 {corpus.sha256} != recipe's {r.corpus_sha256} (stdlib changed?)")

    tokenizer = train_tokenizer(corpus.train, r.vocab_size, r.max_position_embeddings)
    encode = tokenizer.backend_tokenizer.encode  # whole texts: no length warning, no special tokens
    train_ids = torch.tensor(encode(corpus.train).ids)
    heldout_ids = encode(corpus.heldout).ids
    log(f"tokenizer: {len(tokenizer)} tokens; train {len(train_ids)} tokens, held-out {len(heldout_ids)}")

    config, model_class = model_config(r, tokenizer.convert_tokens_to_ids(EOS))
    fitted = fit(lambda: model_class(config), train_ids, heldout_ids, r.training(), log, t0)

    fitted.model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    (out / "heldout.txt").write_text(corpus.heldout, encoding="utf-8")
    build_seconds = time.perf_counter() - t0
    write_record(out, {
        "name": NAME,
        "recipe": dataclasses.asdict(r),
        "recipe_hash": r.recipe_hash(),
        "architecture": model_class.__name__,
        "corpus": corpus.summary(),
        "train_steps": r.steps,
        **fitted.record(),
        "heldout_perplexity_definition": (
            f"exp(mean next-token NLL) over heldout.txt tokenized as one stream and cut into "
            f"non-overlapping windows of seq_len={r.seq_len} tokens (first token of each window "
            f"is context only, shorter last window included), float32, at the end of the build"
        ),
        "build_seconds": build_seconds,
    })
    log(f"built tiny-llama in {build_seconds:.1f} s: held-out perplexity {fitted.heldout_perplexity:.2f}, "
        f"final train loss {fitted.final_train_loss:.3f}")


register(NAME, CONTEXT, default_recipe)
