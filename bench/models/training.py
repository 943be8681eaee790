"""The training loop of the built-ins trained on the corpus (tiny-llama, its variants, the zoo), and their perplexity.

`train` runs AdamW (weight decay on matrices only, gradient clipping) on random `seq_len` windows of the
train token stream with a linear-warmup-cosine learning rate (`lr_at`), from a fixed seed, on a fixed
number of threads; `fit` makes the model under the seed and trains and evaluates it, so the same
`Training` gives the same weights bit for bit with the same torch and transformers versions.
`heldout_perplexity` is exp(mean next-token NLL) over non-overlapping windows of the held-out stream.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Training:
    """The training settings of one build."""

    seed: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    train_threads: int
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0


def lr_at(step: int, t: Training) -> float:
    """Linear warmup to t.lr, then cosine decay to t.lr * t.min_lr_ratio at t.steps."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, train_ids, t: Training, log: Callable[[str], None], t0: float) -> float:
    """AdamW on random seq_len windows of the train stream; returns the mean loss of the last 10% of steps."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas)
    gen = torch.Generator().manual_seed(t.seed)
    offsets = torch.arange(t.seq_len)
    log_every = max(1, t.steps // 10)
    losses = []
    model.train()
    for step in range(t.steps):
        starts = torch.randint(0, len(train_ids) - t.seq_len, (t.batch_size,), generator=gen)
        x = train_ids[starts[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, t)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == t.steps:
            mean = sum(losses[-log_every:]) / len(losses[-log_every:])
            log(f"step {step + 1}/{t.steps}  loss {mean:.3f}  {time.perf_counter() - t0:.1f} s")
    return sum(losses[-log_every:]) / len(losses[-log_every:])


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


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class Fitted:
    """A trained model and what its training measured."""

    model: Any
    final_train_loss: float
    heldout_perplexity: float
    heldout_tokens: int
    untrained_perplexity: float | None = None

    def record(self) -> dict[str, Any]:
        """The fields of bench_model.json every corpus-trained build writes."""
        untrained = {} if self.untrained_perplexity is None else \
            {"heldout_perplexity_untrained": self.untrained_perplexity}
        return {
            "n_parameters": sum(p.numel() for p in self.model.parameters()),
            "final_train_loss": self.final_train_loss,
            "final_train_loss_definition": "mean training loss over the last 10% of steps",
            "heldout_tokens": self.heldout_tokens,
            **untrained,
            "heldout_perplexity": self.heldout_perplexity,
        }


def fit(make_model: Callable[[], Any], train_ids, heldout_ids: list[int], t: Training, log: Callable[[str], None],
        t0: float, eval_batch_size: int = 32, measure_untrained: bool = False) -> Fitted:
    """`make_model()` under `t.seed`, trained on `train_ids` and evaluated on `heldout_ids`, on t.train_threads."""
    import torch

    with torch_threads(t.train_threads):
        torch.manual_seed(t.seed)
        model = make_model()
        untrained = heldout_perplexity(model, heldout_ids, t.seq_len, eval_batch_size) if measure_untrained else None
        loss = train(model, train_ids, t, log, t0)
        ppl = heldout_perplexity(model, heldout_ids, t.seq_len, eval_batch_size)
    return Fitted(model, loss, ppl, len(heldout_ids), untrained)
