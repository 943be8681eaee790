"""Whether llama.cpp's extra CPU buffer types (AMX tiles, repacked weight layouts) run on this machine.

llama-cpp-python compiles llama.cpp for the build machine's CPU (`-march=native`). On some virtual
machines the CPU advertises AMX and the kernel grants it, yet the first tile instruction faults
(SIGILL in ggml's AMX matmul, seen on a 2-core Xeon VM). Such a crash would take down a case, or a
whole test process, so the first load of each GGUF weight type decodes a few tokens in a child
process with the extra buffer types on. If the child dies, the backend loads with
`use_extra_bufts = False` (plain CPU kernels, same results) and says why in its description. The
verdict is cached per CPU, llama-cpp-python version and file, so the probe runs once per machine.
"""
from __future__ import annotations

import hashlib
import json
import platform
import signal
import subprocess
import sys
from pathlib import Path

from bench.core.cache import cache_dir, write_json_atomic

_PROBE = """
import sys, llama_cpp as l
l.llama_backend_init()
params = l.llama_model_default_params()
params.use_extra_bufts = True
model = l.llama_model_load_from_file(sys.argv[1].encode(), params)
cparams = l.llama_context_default_params()
cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 64
cparams.n_threads = cparams.n_threads_batch = 1
ctx = l.llama_init_from_model(model, cparams)
tokens = (l.llama_token * 8)(*range(1, 9))
sys.exit(l.llama_decode(ctx, l.llama_batch_get_one(tokens, 8)))
"""


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    return model + hashlib.sha256(flags.encode()).hexdigest()[:12]


def extra_buffers_work(gguf_path: Path, llama_cpp_version: str) -> tuple[bool, str]:
    """(True, why) when llama.cpp's extra buffer types decode `gguf_path` here; (False, why) when they crash."""
    stat = gguf_path.stat()
    identity = json.dumps([_cpu(), llama_cpp_version, gguf_path.name, stat.st_size])
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    verdict_file = cache_dir() / "probes" / f"llama-extra-buffers-{key}.json"
    if verdict_file.is_file():
        verdict = json.loads(verdict_file.read_text())
        return verdict["works"], verdict["reason"]
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(gguf_path)], capture_output=True, timeout=300,
                          check=False)
    if proc.returncode > 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"llama.cpp could not decode {gguf_path} at all (probe exit {proc.returncode}): "
                           + " / ".join(tail))
    if proc.returncode < 0:
        works, reason = False, (f"llama.cpp's extra CPU buffer types (AMX, repacked layouts) crashed a probe with "
                                f"{signal.Signals(-proc.returncode).name} on this CPU; plain CPU kernels are used")
    else:
        works, reason = True, "llama.cpp's extra CPU buffer types passed a probe decode on this CPU"
    write_json_atomic(verdict_file, {"works": works, "reason": reason, "returncode": proc.returncode,
                                     "gguf": str(gguf_path)})
    return works, reason
