"""vLLM's offline engine, stepped per token (engine.py); on a CPU in its own interpreter."""
