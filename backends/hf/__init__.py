"""transformers backends: eager and SDPA attention, and their quantized variants (quant.py)."""
