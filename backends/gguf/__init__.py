"""llama.cpp backends: GGUF files made by llama.cpp's own converter and quantizer (convert.py), run through
llama-cpp-python (llama_cpp.py)."""
