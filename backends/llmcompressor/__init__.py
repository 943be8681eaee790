"""llm-compressor checkpoints (GPTQ, AWQ) for the backends that run compressed-tensors: HF and vLLM.

`checkpoint.py` builds and caches them (the job, `oneshot.py`, runs in the `llmcompressor` side
environment); `backends/hf/quant.py` and `backends/vllm/engine.py` load them.
"""
