"""The child process `convert.quantize` runs: llama.cpp's own quantizer on one GGUF file.

`python -m backends.gguf.quantize_child SOURCE OUT LLAMA_FTYPE_NAME` exits with `llama_model_quantize`'s
status; run through `backends.cached_build.run_python`, which measures its time and peak RSS.
"""
from __future__ import annotations

import ctypes
import sys


def main(argv: list[str]) -> int:
    import llama_cpp

    source, out, ftype = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    return int(llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
