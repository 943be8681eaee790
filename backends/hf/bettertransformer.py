"""The "BetterTransformer" backend, as it exists today: PyTorch's fused SDPA attention path.

optimum's BetterTransformer was removed in optimum 2.0, and transformers 5 dropped
`PreTrainedModel.to_bettertransformer()`. Their replacement upstream is native
`attn_implementation="sdpa"` (torch.nn.functional.scaled_dot_product_attention), optionally with
`torch.compile`. This backend runs exactly that and records the mechanism in every result, so a
number labelled bettertransformer is never mistaken for the retired optimum conversion.
"""
from __future__ import annotations

from backends.hf.eager import HFEager


class BetterTransformer(HFEager):
    name = "bettertransformer"
    attn_implementation = "sdpa"

    def mechanism(self) -> str:
        return ("transformers attn_implementation='sdpa' (torch scaled_dot_product_attention), the "
                "replacement for optimum BetterTransformer (removed in optimum 2.0 / transformers 5)")
