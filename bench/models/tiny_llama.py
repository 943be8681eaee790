"""The built-in `tiny-llama` model: a small Llama trained offline, deterministically, on stdlib docstrings.

`build()` trains a byte-level BPE tokenizer and a 2-layer Llama on the corpus train split
(fixed seed, step count and thread count), measures held-out perplexity and saves everything
to `cache_dir()/models/tiny-llama-<recipe_hash>`. Later calls return the cached directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core.cache import build_dir_atomically, cache_dir
from bench.models.corpus import load_corpus

EOS = "<|endoftext|>"
CONTEXT = 1024  # max_position_embeddings of the recipe below


@dataclasses.dataclass(frozen=True)
class Recipe:
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

    def recipe_hash(self) -> str:
        fields = dataclasses.asdict(self)
        if fields["sliding_window"] is None:  # added later: a recipe without it keeps the hash (and build) it had
            del fields["sliding_window"]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def default_recipe() -> Recipe:
    return Recipe(corpus_sha256=load_corpus().sha256)


def model_dir(recipe: Recipe) -> Path:
    return cache_dir() / "models" / f"tiny-llama-{recipe.recipe_hash()}"


def is_complete(path: Path) -> bool:
    return (path / "bench_model.json").exists()


def build(force: bool = False, log: Callable[[str], None] = print, recipe: Recipe | None = None) -> Path:
    """Directory of the tiny-llama model for `recipe` (default recipe if None), building it if needed."""
    recipe = recipe or default_recipe()
    target = model_dir(recipe)
    if is_complete(target) and not force:
        return target
    return build_dir_atomically(target, lambda tmp: _build_into(tmp, recipe, log), is_complete, force)


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


def save_tokenizer(tokenizer, path: Path) -> None:
    """save_pretrained, then declare PreTrainedTokenizerFast (transformers 5 writes
    "TokenizersBackend", which transformers 4.x, e.g. vLLM's, cannot load)."""
    tokenizer.save_pretrained(path)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def heldout_perplexity(model, ids: list[int], seq_len: int, batch_size: int = 32) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of `seq_len` tokens.

    The first token of each window is context only; a shorter last window is included.
    """
    import torch

    n_full = len(ids) // seq_len
    batches = list(torch.tensor(ids[: n_full * seq_len]).view(n_full, seq_len).split(batch_size))
    if len(ids) - n_full * seq_len > 1:
        batches.append(torch.tensor([ids[n_full * seq_len :]]))
    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x in batches:
            logits = model(x).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="sum")
            total_nll += nll.item()
            total_tokens += x[:, 1:].numel()
    return math.exp(total_nll / total_tokens)


def lr_at(step: int, r: Recipe) -> float:
    """Linear warmup to r.lr, then cosine decay to r.lr * r.min_lr_ratio at r.steps."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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
    import transformers

    log(f"building tiny-llama {r.recipe_hash()} ({r.steps} steps, {r.train_threads} thread(s))")
    t0 = time.perf_counter()
    corpus = load_corpus()
    if corpus.sha256 != r.corpus_sha256:
        raise ValueError(f"corpus sha256 {corpus.sha256} != recipe's {r.corpus_sha256} (stdlib changed?)")

    tokenizer = train_tokenizer(corpus.train, r.vocab_size, r.max_position_embeddings)
    encode = tokenizer.backend_tokenizer.encode  # whole texts: no length warning, no special tokens
    train_ids = torch.tensor(encode(corpus.train).ids)
    heldout_ids = encode(corpus.heldout).ids
    log(f"tokenizer: {len(tokenizer)} tokens; train {len(train_ids)} tokens, held-out {len(heldout_ids)}")

    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config, model_class = model_config(r, eos_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(r.train_threads)
    try:
        torch.manual_seed(r.seed)
        model = model_class(config)
        loss = _train(model, train_ids, r, log, t0)
        ppl = heldout_perplexity(model, heldout_ids, r.seq_len)
    finally:
        torch.set_num_threads(threads)

    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    (out / "heldout.txt").write_text(corpus.heldout, encoding="utf-8")
    build_seconds = time.perf_counter() - t0
    info = {
        "name": "tiny-llama",
        "recipe": dataclasses.asdict(r),
        "recipe_hash": r.recipe_hash(),
        "architecture": model_class.__name__,
        "corpus": {"sha256": corpus.sha256, "n_files": corpus.n_files, "n_docstrings": corpus.n_docstrings},
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": r.steps,
        "final_train_loss": loss,
        "final_train_loss_definition": "mean training loss over the last 10% of steps",
        "heldout_tokens": len(heldout_ids),
        "heldout_perplexity": ppl,
        "heldout_perplexity_definition": (
            f"exp(mean next-token NLL) over heldout.txt tokenized as one stream and cut into "
            f"non-overlapping windows of seq_len={r.seq_len} tokens (first token of each window "
            f"is context only, shorter last window included), float32, at the end of the build"
        ),
        "build_seconds": build_seconds,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    (out / "bench_model.json").write_text(json.dumps(info, indent=2) + "\n")
    log(
        f"built tiny-llama in {build_seconds:.1f} s: held-out perplexity {ppl:.2f}, final train loss {loss:.3f}"
    )


def _train(model, train_ids, r: Recipe, log: Callable[[str], None], t0: float) -> float:
    """AdamW on random seq_len windows of the train stream; returns the mean loss of the last 10% of steps."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=r.lr, betas=r.betas)
    gen = torch.Generator().manual_seed(r.seed)
    offsets = torch.arange(r.seq_len)
    log_every = max(1, r.steps // 10)
    losses = []
    model.train()
    for step in range(r.steps):
        starts = torch.randint(0, len(train_ids) - r.seq_len, (r.batch_size,), generator=gen)
        x = train_ids[starts[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, r)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == r.steps:
            mean = sum(losses[-log_every:]) / len(losses[-log_every:])
            log(f"step {step + 1}/{r.steps}  loss {mean:.3f}  {time.perf_counter() - t0:.1f} s")
    return sum(losses[-log_every:]) / len(losses[-log_every:])
