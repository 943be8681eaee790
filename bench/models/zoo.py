"""The offline architecture zoo: small models of the decoder architectures people run, with real tokenizers.

Each zoo model is built from transformers' own config class for its `model_type` (Llama 3, Qwen2,
Qwen3, Mistral with a sliding window, Gemma 3, Phi-3, OLMo 2, Qwen3-MoE, GPT-2), with a real tokenizer
that llama.cpp ships as a vocabulary-only GGUF (`ggml-vocab-<name>.gguf` from llama-cpp-python's
sdist, see `backends/gguf/llamacpp_source.py`; loaded by transformers' GGUF reader), so llama.cpp's
own converter recognises it. Weights are initialised with a fixed seed and trained briefly on the
stdlib docstring corpus with tiny-llama's training loop (bench/models/training.py): hidden sizes are small
because the 50-262k token embeddings dominate. Each recipe's `build()` (bench/models/recipe.py) caches its
model under `cache_dir()/models/<name>-<recipe_hash>` and records how it was made in `bench_model.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.models import corpus as corpus_source
from bench.models.recipe import ModelRecipe, register, write_record
from bench.models.tokenizer import load_vocab, save_tokenizer
from bench.models.training import Training, fit

CONTEXT = 1024  # max_position_embeddings of every zoo model
_COMMON = {"max_position_embeddings": CONTEXT, "dtype": "float32"}


@dataclasses.dataclass(frozen=True)
class ZooRecipe(ModelRecipe):
    """Everything that determines one zoo model (besides library versions)."""

    name: str
    model_type: str  # transformers' model_type (AutoConfig.for_model)
    vocab: str  # llama.cpp's ggml-vocab-<vocab>.gguf
    architecture: tuple[tuple[str, Any], ...]  # config kwargs
    note: str  # what the architecture exercises, in words
    tokenizer_class: str = "PreTrainedTokenizerFast"  # declared in tokenizer_config.json
    # tokens added to the vocabulary as special tokens (ids after the base vocabulary's)
    special_tokens: tuple[str, ...] = ()
    seed: int = 0
    seq_len: int = 128
    batch_size: int = 2
    steps: int = 60
    lr: float = 3e-3
    warmup_steps: int = 6
    train_threads: int = 1
    heldout_tokens: int = 4096  # the recorded held-out perplexity reads this many tokens (large vocabularies)

    def config_kwargs(self) -> dict[str, Any]:
        return {**_COMMON, **dict(self.architecture)}

    @property
    def prefix(self) -> str:
        return self.name

    @property
    def context(self) -> int:
        return self.config_kwargs()["max_position_embeddings"]

    def hash_fields(self) -> list[Any]:
        """The recipe's fields and the sha256 of the corpus it is trained on (this Python's stdlib's)."""
        fields = dataclasses.asdict(self)
        if not fields["special_tokens"]:  # left out when empty: recipes that add none keep their hash and builds
            del fields["special_tokens"]
        return [fields, corpus_source.load_corpus().sha256]

    def training(self) -> Training:
        return Training(seed=self.seed, seq_len=self.seq_len, batch_size=self.batch_size, steps=self.steps,
                        lr=self.lr, warmup_steps=self.warmup_steps, train_threads=self.train_threads)

    def build_into(self, out: Path, log: Callable[[str], None]) -> None:
        _build_into(out, self, log)


def _arch(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kwargs.items()))


_ATTN = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}

ZOO: dict[str, ZooRecipe] = {r.name: r for r in (
    ZooRecipe("zoo-llama", "llama", "llama-bpe", _arch(**_ATTN, rope_theta=500000.0, tie_word_embeddings=True),
              "Llama 3: GQA, RoPE (theta 5e5), SwiGLU, RMSNorm, Llama 3's 128k BPE vocabulary"),
    ZooRecipe("zoo-qwen2", "qwen2", "qwen2", _arch(**_ATTN, tie_word_embeddings=True),
              "Qwen2/2.5: Llama-like with biases on the q/k/v projections, Qwen's 152k vocabulary"),
    ZooRecipe("zoo-qwen3", "qwen3", "qwen2", _arch(**_ATTN, head_dim=16, tie_word_embeddings=True),
              "Qwen3: RMSNorm on queries and keys (QK-norm), no q/k/v biases"),
    ZooRecipe("zoo-mistral", "mistral", "llama-spm",
              _arch(**_ATTN, sliding_window=64, tie_word_embeddings=False),
              "Mistral: sliding-window attention (64 tokens here, shorter than the 256-token windows "
              "perplexity reads), SentencePiece 32k vocabulary (Llama 2's)"),
    ZooRecipe("zoo-gemma3", "gemma3_text", "llama-bpe",
              _arch(**_ATTN, head_dim=16, sliding_window=32, query_pre_attn_scalar=16,
                    layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True),
              "Gemma 3: interleaved local (32-token sliding window) and global attention, QK-norm, "
              "norms with +1 offset, scaled embeddings, GeGLU; Llama 3's vocabulary (llama.cpp's gemma-4 "
              "vocabulary does not load in transformers 5.23, and Gemma's own SentencePiece file is not shipped)"),
    ZooRecipe("zoo-phi3", "phi3", "gpt-2",
              _arch(**_ATTN, original_max_position_embeddings=CONTEXT, tie_word_embeddings=False),
              "Phi-3/Phi-4: fused qkv and gate_up projections, no RoPE scaling (original context = context, "
              "as onnxruntime-genai's builder requires); GPT-2's BPE vocabulary declared as GPT2Tokenizer "
              "the way Phi-4 does (Phi-3's own is SentencePiece), plus Phi-3's special tokens <s>, </s> and "
              "<unk>, which llama.cpp looks up by name in any model whose name says phi3",
              tokenizer_class="GPT2Tokenizer", special_tokens=("<s>", "</s>", "<unk>")),
    ZooRecipe("zoo-olmo2", "olmo2", "gpt-2", _arch(**_ATTN, tie_word_embeddings=False),
              "OLMo 2: norms after attention and MLP (post-norm), QK-norm over all heads; GPT-2's 50k "
              "vocabulary (OLMo's own is not shipped by llama.cpp; its gpt-neox one does not load in "
              "transformers 5.23)"),
    ZooRecipe("zoo-qwen3-moe", "qwen3_moe", "qwen2",
              _arch(**_ATTN, head_dim=16, moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                    decoder_sparse_step=1, norm_topk_prob=True, tie_word_embeddings=True),
              "Qwen3-MoE: 4 experts, 2 routed per token, in every layer"),
    ZooRecipe("zoo-gpt2", "gpt2", "gpt-2",
              _arch(n_embd=64, n_layer=2, n_head=4, n_positions=CONTEXT, n_ctx=CONTEXT, tie_word_embeddings=True),
              "GPT-2: learned absolute positions (no RoPE), LayerNorm with biases, GELU MLP (n_ctx is written "
              "because llama.cpp's GPT-2 converter reads it and transformers 5 no longer does)"),
)}


def _build_into(out: Path, r: ZooRecipe, log: Callable[[str], None]) -> None:
    import torch
    import transformers

    log(f"building {r.name} ({r.model_type}, vocabulary {r.vocab}, {r.steps} steps, {r.train_threads} thread(s))")
    t0 = time.perf_counter()
    corpus = corpus_source.load_corpus()
    tokenizer = load_vocab(r.vocab, log)
    if r.special_tokens:
        tokenizer.add_tokens(list(r.special_tokens), special_tokens=True)
    encode = tokenizer.backend_tokenizer.encode  # whole texts, no special tokens
    train_ids = torch.tensor(encode(corpus.train, add_special_tokens=False).ids)
    heldout_ids = encode(corpus.heldout, add_special_tokens=False).ids[:r.heldout_tokens]
    special = {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in
               (("bos_token_id", tokenizer.bos_token), ("eos_token_id", tokenizer.eos_token),
                ("pad_token_id", tokenizer.pad_token or tokenizer.eos_token)) if tok is not None}
    config = transformers.AutoConfig.for_model(r.model_type, vocab_size=len(tokenizer), **special,
                                               **r.config_kwargs())
    training = r.training()
    fitted = fit(lambda: transformers.AutoModelForCausalLM.from_config(config), train_ids, heldout_ids, training,
                 log, t0, eval_batch_size=2, measure_untrained=True)

    fitted.model.generation_config.pad_token_id = special.get("pad_token_id")
    fitted.model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out, r.tokenizer_class)
    (out / "heldout.txt").write_text(corpus.heldout, encoding="utf-8")
    build_seconds = time.perf_counter() - t0
    write_record(out, {
        "name": r.name,
        "model_type": r.model_type,
        "architecture_note": r.note,
        "recipe": dataclasses.asdict(r),
        "recipe_hash": r.recipe_hash(),
        "training_recipe": dataclasses.asdict(training),
        "tokenizer_source": f"llama.cpp's models/ggml-vocab-{r.vocab}.gguf from llama-cpp-python's sdist, "
                            f"read by transformers' GGUF tokenizer loader",
        "vocab_size": len(tokenizer),
        "corpus": corpus.summary(),
        "train_steps": r.steps,
        "train_tokens": r.steps * r.batch_size * r.seq_len,
        **fitted.record(),
        "heldout_perplexity_definition": (
            f"exp(mean next-token NLL) over the first {len(heldout_ids)} tokens of heldout.txt tokenized "
            f"as one stream without special tokens and cut into non-overlapping windows of "
            f"seq_len={r.seq_len} tokens (first token of each window is context only), float32"),
        "build_seconds": build_seconds,
    })
    log(f"built {r.name} in {build_seconds:.1f} s: held-out perplexity {fitted.heldout_perplexity:.1f} "
        f"(untrained {fitted.untrained_perplexity:.0f}), final train loss {fitted.final_train_loss:.3f}")


for _recipe in ZOO.values():
    register(_recipe.name, _recipe.context, functools.partial(ZOO.__getitem__, _recipe.name))
