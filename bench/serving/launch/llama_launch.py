"""Start llama-cpp-python's OpenAI server with llama.cpp's extra CPU buffer types on or off, and prefix reuse.

`python -m bench.serving.launch.llama_launch --use-extra-bufts 0|1 [--prefix-reuse 0|1] SERVER-ARGS...` runs
`python -m llama_cpp.server SERVER-ARGS...`, having set `use_extra_bufts` in llama.cpp's default model
parameters, which the server's `Llama(...)` starts from: the server has no setting for it, and on CPUs
whose AMX tiles fault (backends/gguf/cpu_probe.py) the default crashes the server at its first decode.
`--prefix-reuse 0` turns off what llama-cpp-python does by default and has no setting for either:
`Llama.generate` keeps the KV cells of the longest prefix a prompt shares with the previous one and
evaluates only the rest; with 0, each generation starts from an empty state (`Llama.reset()`) and
evaluates its whole prompt (the server's optional `--cache` state cache stays off, its default).
Imports nothing of bench, so it runs in any interpreter that has llama-cpp-python.
"""
from __future__ import annotations

import sys


def whole_prompt(generate):
    """`Llama.generate` that starts every generation from an empty state, evaluating the whole prompt."""
    def generate_whole_prompt(self, tokens, *args, **kwargs):
        self.reset()  # n_tokens = 0: generate finds no cached prefix and evaluates the whole prompt
        return generate(self, tokens, *args, **kwargs)
    return generate_whole_prompt


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--use-extra-bufts" or argv[1] not in ("0", "1"):
        raise SystemExit("usage: python -m bench.serving.launch.llama_launch --use-extra-bufts 0|1 "
                         "[--prefix-reuse 0|1] SERVER-ARGS...")
    use_extra_bufts = argv[1] == "1"
    prefix_reuse = True
    if argv[2:3] == ["--prefix-reuse"]:
        prefix_reuse, argv = argv[3] == "1", argv[:2] + argv[4:]
    import llama_cpp.llama_cpp as lib

    default_params = lib.llama_model_default_params

    def model_params():
        params = default_params()
        params.use_extra_bufts = use_extra_bufts
        return params

    lib.llama_model_default_params = model_params
    print(f"llama.cpp extra CPU buffer types: {'on' if use_extra_bufts else 'off'}", flush=True)
    if not prefix_reuse:  # Llama.generate keeps the KV cells of the longest prefix shared with the last prompt
        from llama_cpp import Llama

        Llama.generate = whole_prompt(Llama.generate)  # type: ignore[method-assign]
    print(f"llama.cpp prompt-prefix reuse across requests: {'on' if prefix_reuse else 'off'}", flush=True)
    from llama_cpp.server.__main__ import main as serve

    sys.argv = ["llama_cpp.server", *argv[2:]]
    serve()


if __name__ == "__main__":
    main(sys.argv[1:])
