"""llama.cpp backends: GGUF files written by bench (convert.py), run through llama-cpp-python."""
