"""Checks a suite must pass beyond its schema, so a mistake fails `validate` in a second, not a run later.

Each names the file, the line and the field: a suite that expands to more cases than the limit (counted
before anything is expanded), models that cannot be found, a model's config.json whose fields bench reads
(its context length, its KV-cache layout) are not positive integers, an evaluation text that is missing,
empty or not UTF-8 text, workloads longer than a model's context, more threads than this machine has, an
interpreter that cannot be executed, two variants with the same label, a suite that expands to no case.
"""
from __future__ import annotations

import codecs
import json
import os
import re
from pathlib import Path
from typing import Any

from backends import backend_class
from bench.measure.evaltext import NAMES as EVAL_TEXT_NAMES
from bench.records.schema import CaseSpec
from bench.records.yaml_lines import LineIndex, SuiteError, line_of
from bench.suite.expand import count_cases, variant_grid, variant_label
from bench.suite.schema import Suite

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # `name` or `org/name`
TEXT_PROBE_BYTES = 1 << 20  # the evaluation text's first MiB is checked to be UTF-8


def _at(path: Path, index: LineIndex, loc: tuple, message: str) -> SuiteError:
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return SuiteError(f"{path}:{line_of(index, loc)}: {field}: {message}")


def check_case_count(path: Path, index: LineIndex, suite: Suite, limit: int | None) -> None:
    """At most `limit` cases (None: no limit), counted arithmetically before anything is expanded; the error names
    the entry that gives the most cases and the lists that multiply to them."""
    counts = count_cases(suite)
    total = sum(c.cases for c in counts)
    if limit is None or total <= limit:
        return
    biggest = max(counts, key=lambda c: c.cases)
    rest = f" (the other entries add {total - biggest.cases:,})" if total != biggest.cases else ""
    raise _at(path, index, biggest.where, f"the suite expands to {total:,} cases, more than the limit of {limit:,}: "
              f"{' x '.join(what for _, what in biggest.factors)} = {biggest.cases:,} cases{rest}; shorten these "
              f"lists or split the suite, or raise the limit with --max-cases N")


# Fields of a model's config.json that bench reads without loading the model: the context length (the checks
# below) and the KV-cache layout (bench/measure/kvcache.py); each, when present, must be a positive integer.
CONFIG_INTEGERS = ("max_position_embeddings", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "hidden_size", "head_dim")


def _config_problem(config: dict, file: Path) -> str:
    """Why a config.json's fields that bench reads cannot be used ('' when they can); `text_config` (a multimodal
    model's language model) is read the same way."""
    if "text_config" in config and not isinstance(config["text_config"], dict | None):
        return f"{file}: text_config must be a JSON object, not {json.dumps(config['text_config'])[:40]}"
    for where, section in (("", config), ("text_config.", config.get("text_config") or {})):
        for name in CONFIG_INTEGERS:
            value = section.get(name)
            if value is not None and (type(value) is not int or value < 1):
                return (f"{file}: {where}{name}: {json.dumps(value)[:40]} is not a positive integer (bench reads it "
                        f"for the model's context length and KV-cache size)")
    return ""


def model_context(model: str) -> int | None:
    """The model's context length in tokens when it can be read without loading it (config.json), else None.
    A value that is not a positive integer never reaches here: check_models refuses it."""
    from bench.models import MODELS

    if model in MODELS:
        return MODELS[model].context
    config = Path(model).expanduser() / "config.json"
    try:
        value = json.loads(config.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if type(value) is int and value > 0 else None


def check_models(path: Path, index: LineIndex, suite: Suite) -> None:
    from bench.models import MODELS

    for i, model in enumerate(suite.models):
        if model in MODELS:
            continue
        local = Path(model).expanduser()
        if local.exists():
            problem = _local_model_problem(local)
            if problem:
                raise _at(path, index, ("models", i), f"{model} {problem}")
            continue
        looks_local = model.startswith(("/", "./", "../", "~")) or model.endswith((".gguf", ".onnx"))
        if looks_local or not HUB_ID.fullmatch(model):
            raise _at(path, index, ("models", i), f"{model} does not exist; give a built-in name "
                                                  f"({', '.join(sorted(MODELS))}), an existing local "
                                                  f"directory or file, or a hub id (org/name)")


MODEL_FILE_SUFFIXES = (".gguf", ".onnx")  # the model files a backend loads directly


def _local_model_problem(local: Path) -> str:
    """Why an existing local path is not a model ('' when it looks like one): a directory needs a config.json that
    is a JSON object; a plain file must be one a backend loads (.gguf, .onnx)."""
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            return "is a directory without config.json: not a Hugging Face model directory"
        try:
            parsed = json.loads(config.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            return f"has a config.json that is not JSON ({exc})"
        if not isinstance(parsed, dict):
            return "has a config.json that is not a JSON object"
        problem = _config_problem(parsed, config)
        return f"has a config.json that bench cannot read: {problem}" if problem else ""
    if not local.is_file() or local.suffix.lower() not in MODEL_FILE_SUFFIXES:
        return (f"is a file but not a model file ({', '.join(MODEL_FILE_SUFFIXES)}); give a model directory "
                f"(with config.json) or a model file")
    return ""


def check_eval_text(path: Path, index: LineIndex, suite: Suite) -> None:
    """A file named as the evaluation text (prompts are cut from it too) must be non-empty UTF-8 text."""
    text = suite.perplexity.text
    if text in EVAL_TEXT_NAMES:
        return
    loc = ("perplexity", "text")
    file = Path(text).expanduser()
    if not file.is_file():
        raise _at(path, index, loc, f"{text}: no such file (relative paths are relative to where you run bench); "
                                    f"valid names: {', '.join(EVAL_TEXT_NAMES)}, or a UTF-8 text file")
    with open(file, "rb") as f:
        head = f.read(TEXT_PROBE_BYTES)
    if not head.strip():
        raise _at(path, index, loc, f"{text} is empty: prompts and perplexity need text")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise _at(path, index, loc, f"{text} is not UTF-8 text (byte 0x{head[exc.start]:02x} at offset "
                                    f"{exc.start})") from None


def check_prompts_file(path: Path, index: LineIndex, suite: Suite) -> None:
    """A serving prompts file must be a regular UTF-8 JSONL file of bounded size, every line a prompt."""
    from bench.serving.traffic.prompts import read_prompts_file

    file = suite.serving.request.prompts_file if suite.serving is not None else None
    if file is None:
        return
    try:
        read_prompts_file(file)
    except ValueError as exc:
        raise _at(path, index, ("serving", "request", "prompts_file"), str(exc)) from None


def check_contexts(path: Path, index: LineIndex, suite: Suite) -> None:
    """Prompt plus new tokens, and the perplexity window, fit every model whose context is known."""
    for model in suite.models:
        context = model_context(model)
        if context is None:
            continue
        for w, workload in enumerate(suite.workloads) if "latency" in suite.tasks else ():
            for point in workload.grid():
                if point["prompt_tokens"] + point["new_tokens"] > context:
                    raise _at(path, index, ("workloads", w, "prompt_tokens"),
                              f"{point['prompt_tokens']} prompt + {point['new_tokens']} new tokens exceed the "
                              f"{context}-token context of {model}")
        windows = suite.perplexity.window
        for i, (window, _) in enumerate(suite.perplexity.pairs() if "perplexity" in suite.tasks else ()):
            if window > context:
                raise _at(path, index, ("perplexity", "window") + ((i,) if isinstance(windows, list) else ()),
                          f"a window of {window} tokens exceeds the {context}-token context of {model}")


def check_threads(path: Path, index: LineIndex, suite: Suite) -> None:
    from bench.measure.machine import available_cpus

    cpus = available_cpus()
    if suite.threads > cpus:
        raise _at(path, index, ("threads",), f"{suite.threads} threads, but this process may use {cpus} CPU(s): "
                                             f"an oversubscribed case measures the scheduler, not the model")


def _variants(suite: Suite) -> list[tuple[str, int, Any]]:
    """(section, index, variant) of every backend and server variant."""
    return [("backends", i, v) for i, v in enumerate(suite.backends)] + \
        [("servers", i, v) for i, v in enumerate(suite.servers)]


def check_interpreters(path: Path, index: LineIndex, suite: Suite) -> None:
    for section, i, variant in _variants(suite):
        interpreter = variant.interpreter
        if not interpreter or interpreter.startswith("env:"):
            continue  # a managed env may be created later: its cases are skipped with the command until then
        exe = Path(interpreter).expanduser()
        if not exe.exists():
            continue  # made later (the nightly workflow builds its vLLM venv): its cases are skipped until then
        if not exe.is_file() or not os.access(exe, os.X_OK):
            raise _at(path, index, (section, i, "interpreter"), f"{interpreter} is not an executable file")


def check_options(path: Path, index: LineIndex, suite: Suite) -> None:
    from pydantic import ValidationError

    from bench.records.yaml_lines import format_errors
    from bench.serving.launch.servers import server_class

    for section, i, variant in _variants(suite):
        owner = backend_class(variant.backend) if section == "backends" else server_class(variant.server)
        options_model = owner.Options
        for options in variant_grid(variant):
            try:
                options_model(**options)
            except ValidationError as exc:
                raise SuiteError(format_errors(path, index, exc.errors(), options_model,
                                               prefix=(section, i, "options"))) from None


def check_labels(path: Path, index: LineIndex, suite: Suite) -> None:
    """Every variant label names one report row: two variants may not share one."""
    seen: dict[str, tuple[str, int]] = {}
    for section, i, variant in _variants(suite):
        grid = variant_grid(variant)
        for options in grid:
            label = variant_label(variant, options, expanded=len(grid) > 1)
            if label in seen:
                first = seen[label]
                raise _at(path, index, (section, i), f"its label '{label}' is also that of {first[0]}[{first[1]}] "
                          f"(line {line_of(index, first)}); give each variant its own label")
            seen[label] = (section, i)


def check_something_to_run(path: Path, index: LineIndex, suite: Suite) -> None:
    """Backends for latency and perplexity, servers for serving: each task has what it runs."""
    if not suite.backends and not suite.servers:
        raise _at(path, index, ("backends",), "give backends (latency, perplexity) or servers (serving), or both")
    if suite.servers and "serving" not in suite.tasks:
        raise _at(path, index, ("servers",), "servers are listed but 'serving' is not in tasks")
    if "serving" in suite.tasks and (not suite.servers or suite.serving is None):
        raise _at(path, index, ("tasks",), "the serving task needs servers: and a serving: section "
                                           "(levels or a sweep)")
    if not suite.backends and set(suite.tasks) & {"latency", "perplexity"}:
        raise _at(path, index, ("tasks",), "latency and perplexity run backends: give backends, or only the "
                                           "serving task")


def check_cases(path: Path, index: LineIndex, suite: Suite, cases: list[CaseSpec]) -> None:
    if not cases:
        raise SuiteError(f"{path}:1: the suite expands to no case (check models, backends, workloads and tasks)")
    labels = sorted({c.variant for c in cases})
    named = ([(("reference",), suite.reference)] if suite.reference is not None else []) + [
        (("cluster", "variants", label), label) for label in suite.cluster.variants]
    ids = {c.id for c in cases}
    for key in suite.regression.cases:  # a threshold for no case would be ignored silently
        if key not in ids and key not in labels:
            raise _at(path, index, ("regression", "cases", key), f"'{key}' is neither a case id nor a variant label "
                      f"of this suite; variant labels: {', '.join(labels)} (case ids: python -m bench validate)")
    for loc, label in named:
        if label not in labels:
            raise _at(path, index, loc, f"'{label}' is not a variant of this suite; valid values: {', '.join(labels)}")
