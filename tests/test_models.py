"""Tests for bench.models: stdlib corpus, cache helpers, the recipe mechanism and registry, tiny-llama's build
and model resolution.

The real tiny-llama is built once (~1 min) into BENCH_CACHE (default ~/.cache/bench) and reused
by later runs.
"""

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from bench.core.cache import build_dir_atomically, cache_dir
from bench.models import MODELS, UnknownName, build_builtin, resolve_model, tiny_llama, training, zoo
from bench.models import corpus as corpus_mod
from bench.models.recipe import register
from tests.conftest import ROOT, run_bench

UNIGRAM_PPL = 526


@pytest.fixture(scope="session")
def corpus():
    return corpus_mod.load_corpus()


@pytest.fixture(scope="session")
def model_dir():
    return tiny_llama.build()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- corpus -------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_sized(corpus):
    fresh = corpus_mod.build_corpus()
    assert fresh == corpus
    assert 600 <= corpus.n_files <= 900
    assert 5_000 <= corpus.n_docstrings <= 12_000
    assert 1_200_000 <= len(corpus.train) + len(corpus.heldout) <= 2_500_000
    assert 0.05 <= len(corpus.heldout) / len(corpus.train) <= 0.25
    assert corpus.sha256 == hashlib.sha256((corpus.train + corpus.heldout).encode()).hexdigest()


def test_corpus_excludes_tests_and_site_packages():
    files = corpus_mod.stdlib_files(Path(sysconfig.get_paths()["stdlib"]))
    assert files == sorted(files)
    assert Path("ast.py") in files and Path("json/decoder.py") in files
    for rel in files:
        assert not {"site-packages", "test", "tests", "idle_test"} & set(rel.parts), rel


def test_split_is_by_file_and_disjoint(corpus):
    root = Path(sysconfig.get_paths()["stdlib"])
    for i, rel in enumerate(corpus_mod.stdlib_files(root)[:60]):
        docs = corpus_mod.docstrings((root / rel).read_bytes())
        mine, other = (corpus.heldout, corpus.train) if i % 10 == 0 else (corpus.train, corpus.heldout)
        assert all(d in mine for d in docs), rel
        # long docstrings are unique to their file, so they must not leak into the other split
        assert not any(d in other for d in docs if len(d) > 300), rel


def test_heldout_text_is_cached_by_content(corpus):
    assert corpus_mod.heldout_text() == corpus.heldout
    assert corpus_mod.heldout_path() == cache_dir() / "corpus" / f"heldout-{corpus.sha256[:12]}.txt"


# --- cache --------------------------------------------------------------------------------


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("BENCH_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "bench"


def test_concurrent_builders_fill_once(tmp_path):
    target, calls = tmp_path / "thing", []

    def fill(tmp):
        calls.append(tmp)
        time.sleep(0.3)
        (tmp / "done").write_text("ok")

    def complete(p):
        return (p / "done").exists()

    threads = [threading.Thread(target=build_dir_atomically, args=(target, fill, complete)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (target / "done").read_text() == "ok"


def test_failed_build_leaves_nothing(tmp_path):
    def fill(tmp):
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_dir_atomically(tmp_path / "thing", fill, lambda p: p.exists())
    assert [p.name for p in tmp_path.iterdir()] == ["thing.lock"]


# --- recipe and tokenizer -----------------------------------------------------------------


def _changed(value):
    if value is None:  # an optional setting left unset (e.g. sliding_window): set it
        return 64
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return tuple(v / 2 for v in value)
    return value + 1


def test_recipe_hash_changes_with_every_field(corpus):
    base = tiny_llama.default_recipe()
    assert base.corpus_sha256 == corpus.sha256
    assert base.recipe_hash() == tiny_llama.Recipe(corpus_sha256=corpus.sha256).recipe_hash()
    assert len(base.recipe_hash()) == 12
    hashes = {base.recipe_hash()}
    for field in dataclasses.fields(base):
        value = getattr(base, field.name)
        changed = _changed(value)
        hashes.add(dataclasses.replace(base, **{field.name: changed}).recipe_hash())
    assert len(hashes) == len(dataclasses.fields(base)) + 1


def test_default_recipe_shape():
    r = tiny_llama.default_recipe()
    assert (r.vocab_size, r.hidden_size, r.num_layers, r.num_heads, r.num_kv_heads) == (2048, 256, 2, 4, 2)
    assert r.intermediate_size % 256 == 0 and not r.tie_word_embeddings


# Every built-in's cache directory (prefix and recipe hash) and context length as they were before the recipes
# shared one mechanism (computed on main at 64c6843 with BUILTIN_CONTEXT), for the corpus below. A change here
# renames a cached model: every machine would rebuild it, and its conversions.
PINNED_CORPUS_SHA256 = "ced3133db20e312d5dfc3277580edf1d6db70da391aa574981d301cf2f598e97"  # CPython 3.11.7's stdlib
PINNED = {
    "tiny-llama": ("tiny-llama-459cdaacc9d3", 1024),
    "tiny-llama-kv1": ("tiny-llama-9b179b821577", 1024),
    "tiny-llama-kv2": ("tiny-llama-459cdaacc9d3", 1024),
    "tiny-llama-mha": ("tiny-llama-a12e3ae632e9", 1024),
    "tiny-llama-swa": ("tiny-llama-3e703e95d40d", 1024),
    "qwen2.5-0.5b-shape": ("qwen2.5-0.5b-shape-5b9ba12284fe", 32768),
    "zoo-llama": ("zoo-llama-ef7b5ac75f47", 1024),
    "zoo-qwen2": ("zoo-qwen2-74dfe2f84b60", 1024),
    "zoo-qwen3": ("zoo-qwen3-10da42f7306d", 1024),
    "zoo-mistral": ("zoo-mistral-9609f99e9161", 1024),
    "zoo-gemma3": ("zoo-gemma3-a0ce57c6ddaa", 1024),
    "zoo-phi3": ("zoo-phi3-755fa30b4513", 1024),
    "zoo-olmo2": ("zoo-olmo2-e06823d7e335", 1024),
    "zoo-qwen3-moe": ("zoo-qwen3-moe-32285db8dfd4", 1024),
    "zoo-gpt2": ("zoo-gpt2-5b76435cd40b", 1024),
}


def test_every_builtin_keeps_its_cache_directory_and_context(monkeypatch, tmp_path):
    pinned = corpus_mod.Corpus("", "", 0, 0, PINNED_CORPUS_SHA256)  # whatever stdlib this Python has
    monkeypatch.setattr(corpus_mod, "load_corpus", lambda: pinned)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    assert sorted(MODELS) == sorted(PINNED)
    for name, (directory, context) in PINNED.items():
        recipe = MODELS[name].recipe()
        assert recipe.model_dir() == tmp_path / "models" / directory, name
        assert recipe.recipe_hash() == directory.rsplit("-", 1)[1] and not recipe.is_built()
        assert MODELS[name].context == recipe.context == context, name


def test_training_settings_are_the_recipes_and_the_zoo_keeps_tiny_llamas_defaults():
    tiny = tiny_llama.Recipe(corpus_sha256="x", steps=9, lr=1e-3, betas=(0.8, 0.9))
    for field in dataclasses.fields(training.Training):
        assert getattr(tiny.training(), field.name) == getattr(tiny, field.name), field.name
    # the zoo trained with tiny-llama's Recipe defaults for what it does not set: same settings, same weights
    recipe = zoo.ZOO["zoo-gpt2"]
    settings = recipe.training()
    for field in dataclasses.fields(training.Training):
        source = recipe if hasattr(recipe, field.name) else tiny_llama.Recipe(corpus_sha256="x")
        assert getattr(settings, field.name) == getattr(source, field.name), field.name


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    t = training.Training(seed=0, seq_len=8, batch_size=1, steps=100, lr=1.0, warmup_steps=10, train_threads=1)
    assert training.lr_at(0, t) == pytest.approx(0.1) and training.lr_at(9, t) == pytest.approx(1.0)
    assert training.lr_at(10, t) == pytest.approx(1.0)
    assert training.lr_at(55, t) == pytest.approx(0.55)  # half way: the mean of 1 and the 0.1 floor
    assert training.lr_at(100, t) == pytest.approx(0.1)


@pytest.mark.slow
def test_tokenizer_loads_and_round_trips(model_dir, corpus):
    from transformers import AutoTokenizer

    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert len(tok) == 2048 and tok.eos_token == "<|endoftext|>" and tok.eos_token_id == tok.pad_token_id
    for text in [corpus.heldout[:2000], "Return *x* + 1.\n\n    Ünïcode ✓ 😀\ttabs"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert len(ids) < len(text.encode())  # BPE merges actually compress


# --- the real model -----------------------------------------------------------------------


def heldout_ppl(model, ids, seq_len):
    """Independent re-implementation of the documented metric: non-overlapping windows."""
    import torch

    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), seq_len):
            window = torch.tensor([ids[start : start + seq_len]])
            if window.shape[1] < 2:
                continue
            loss = model(input_ids=window, labels=window).loss
            nll += loss.item() * (window.shape[1] - 1)
            n += window.shape[1] - 1
    return math.exp(nll / n)


@pytest.mark.slow
def test_built_model_beats_unigram_and_metric_reproduces(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((model_dir / "bench_model.json").read_text())
    assert model_dir.name == f"tiny-llama-{info['recipe_hash']}"
    assert info["heldout_perplexity"] < UNIGRAM_PPL
    assert (model_dir / "model.safetensors").exists()

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert sum(p.numel() for p in model.parameters()) == info["n_parameters"]
    heldout = (model_dir / "heldout.txt").read_text(encoding="utf-8")
    assert heldout == corpus_mod.heldout_text()
    ids = AutoTokenizer.from_pretrained(model_dir)(heldout)["input_ids"]
    assert len(ids) == info["heldout_tokens"]
    ppl = heldout_ppl(model, ids, info["recipe"]["seq_len"])
    assert ppl == pytest.approx(info["heldout_perplexity"], rel=1e-4)


@pytest.mark.slow
def test_second_build_is_instant_and_identical(model_dir):
    weights = sha256_file(model_dir / "model.safetensors")
    start = time.perf_counter()
    again = tiny_llama.build(log=lambda s: pytest.fail(f"rebuilt: {s}"))
    assert time.perf_counter() - start < 1
    assert again == model_dir and sha256_file(again / "model.safetensors") == weights


@pytest.mark.slow
def test_a_recipe_registered_in_one_line_builds_by_name_bit_for_bit_the_same(tmp_path, monkeypatch, corpus):
    recipe = tiny_llama.Recipe(
        corpus_sha256=corpus.sha256, vocab_size=512, hidden_size=64, intermediate_size=128,
        num_layers=1, seq_len=64, batch_size=4, steps=5, warmup_steps=2,
    )  # fmt: skip
    register("tiny-llama-test-short", 1024, lambda: recipe)
    try:
        dirs = []
        for name in ("a", "b"):
            monkeypatch.setenv("BENCH_CACHE", str(tmp_path / name))
            assert not recipe.is_built()
            dirs.append(build_builtin("tiny-llama-test-short", log=lambda s: None))
            assert recipe.is_built() and resolve_model("tiny-llama-test-short") == str(dirs[-1])
            assert build_builtin("tiny-llama-test-short", log=pytest.fail) == dirs[-1]  # cached: no build
    finally:
        MODELS.remove("tiny-llama-test-short")
    a, b = dirs
    assert a == tmp_path / "a" / "models" / f"tiny-llama-{recipe.recipe_hash()}" and a.name == b.name
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert sha256_file(a / f) == sha256_file(b / f), f
    info_a, info_b = (json.loads((d / "bench_model.json").read_text()) for d in dirs)
    assert info_a["heldout_perplexity"] == info_b["heldout_perplexity"]
    assert info_a["final_train_loss"] == info_b["final_train_loss"]
    assert info_a["recipe_hash"] == recipe.recipe_hash() and info_a["train_steps"] == 5
    assert info_a["torch_version"] and info_a["transformers_version"]


# --- registry and resolution --------------------------------------------------------------


@pytest.mark.slow
def test_resolve_model(model_dir, tmp_path, monkeypatch):
    assert {"tiny-llama", "qwen2.5-0.5b-shape"} <= set(MODELS)  # and the zoo (bench/models/zoo.py)
    assert resolve_model("tiny-llama") == str(model_dir)
    assert build_builtin("tiny-llama") == model_dir
    (tmp_path / "weights.gguf").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("weights.gguf") == str(tmp_path / "weights.gguf")
    assert resolve_model(".") == str(tmp_path)
    assert resolve_model("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_offline_a_name_not_in_the_hub_cache_resolves_to_itself_without_the_download_code(tmp_path):
    """Every worker resolves its model: offline (as in these tests and the default run), a name the HF cache does
    not hold is itself, found without importing huggingface_hub's download code (0.3 s per process)."""
    import sys

    from tests.conftest import ROOT

    script = ("import sys; from bench.models import resolve_model; "
              "print(resolve_model('synthetic'), resolve_model('acme/absent'), "
              "'huggingface_hub.file_download' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["synthetic", "acme/absent", "False"]


@pytest.mark.slow
def test_model_list_says_which_builtins_are_built_and_where(model_dir, tmp_path):
    rows = {line.split()[0]: line.split() for line in run_bench("model", "list", cwd=ROOT).stdout.splitlines()}
    assert list(rows) == list(MODELS)
    assert rows["tiny-llama"] == ["tiny-llama", "context", "1024", "built", str(model_dir)]
    assert rows["qwen2.5-0.5b-shape"][1:3] == ["context", "32768"]
    unknown = run_bench("model", "build", "huge-llama", cwd=tmp_path, check_exit=2)
    assert "unknown built-in model 'huge-llama'; valid names:" in unknown.stderr


def test_unknown_builtin_lists_valid_names():
    with pytest.raises(UnknownName, match="unknown built-in model 'huge-llama'; valid names: .*tiny-llama"):
        build_builtin("huge-llama")


def test_import_is_cheap():
    code = ("import sys, bench.models; "
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
