"""Machine fingerprints on records, reports grouped by machine, what a unit asks of a node, what a node may send
back, and node preparation: the cache's lock holds across concurrent processes on one machine."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from bench.errors import BadInput
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, CaseSpec, Machine, Workload
from bench.report import tables
from bench.run import environment
from bench.run.cluster import placement
from bench.run.cluster.bundle import safe_path, write_files
from bench.run.cluster.settings import ClusterSettings
from bench.run.plan import Unit
from tests.conftest import ROOT


def test_machine_id_hashes_the_hardware_only():
    base = {"cpu_model": "Xeon", "cpu_count": 16, "memory_bytes": 64 << 30, "architecture": "x86_64",
            "gpus": [{"name": "NVIDIA H100", "memory_total_bytes": 80 << 30}]}
    same = environment.machine_id(**base)
    assert len(same) == 16
    assert environment.machine_id(**{**base, "memory_bytes": (64 << 30) - (5 << 20)}) == same  # MemTotal jitter
    for changed in ({"gpus": [{"name": "NVIDIA A100", "memory_total_bytes": 80 << 30}]}, {"cpu_count": 8},
                    {"cpu_model": "EPYC"}, {"gpus": []}):
        assert environment.machine_id(**{**base, **changed}) != same
    here = environment.machine()
    assert here.machine_id == environment.machine_id(here.cpu_model, here.cpu_count, here.memory_bytes,
                                                     here.architecture, here.gpus)  # not hostname, driver, libraries
    assert here.hostname and here.cpu_count and here.libraries.get("pydantic")


def _record(variant: str, machine: Machine | None, tpot: float) -> CaseRecord:
    case = CaseSpec(id=f"{variant}.m.b1", suite="s", model="m", backend="x", variant=variant, task="latency",
                    workload=Workload(batch_size=1, prompt_tokens=8, new_tokens=4), reference="ref")
    return CaseRecord(case=case, status="ok", started_at=0, wall_seconds=1, metrics={"tpot_ms": tpot}, machine=machine)


def test_a_record_keeps_its_machine_and_old_records_load_without_one():
    machine = Machine(machine_id="abc", hostname="node-1", cpu_model="Xeon", gpus=[{"name": "H100"}])
    record = _record("ref", machine, 1.0)
    again = CaseRecord.model_validate_json(record.model_dump_json(exclude_none=True))
    assert again.machine == machine and again.machine.label == "node-1 (abc: Xeon, H100)"
    without = CaseRecord.model_validate_json(_record("ref", None, 1.0).model_dump_json(exclude_none=True))
    assert without.machine is None


def test_reports_group_by_machine_when_a_run_spans_several():
    h100 = Machine(machine_id="h100id", hostname="gpu-1", gpus=[{"name": "H100"}])
    a100 = Machine(machine_id="a100id", hostname="gpu-2", gpus=[{"name": "A100"}])
    entries = [tables.Entry("r", rec) for rec in (_record("ref", h100, 1.0), _record("v", h100, 2.0),
                                                   _record("ref", a100, 4.0), _record("v", a100, 4.0))]
    result = tables.result_tables(entries)
    assert [t.title.endswith(("gpu-1 (h100id: ?, H100)", "gpu-2 (a100id: ?, A100)")) for t in result] == [True, True]
    column = [c.header for c in result[0].columns].index("TPOT vs ref")
    ratios = [row[column].text for t in result for row in t.rows]  # ratios to the reference within each machine
    assert ratios == ["1.000x", "2.000x", "1.000x", "1.000x"]
    [machines] = tables.machine_tables(entries)
    assert [row[0].text for row in machines.rows] == ["h100id", "a100id"]
    one = [tables.Entry("r", _record(v, h100, 1.0)) for v in ("ref", "v")]
    assert len(tables.result_tables(one)) == 1 and not tables.machine_tables(one)


def _unit(*cases: CaseSpec) -> Unit:
    return Unit("interleaved", cases)


def test_a_unit_asks_for_its_threads_gpus_resources_and_labels():
    cpu = CaseSpec(id="c", suite="s", model="m", backend="x", variant="cpu", task="latency", threads=2)
    gpu = CaseSpec(id="g", suite="s", model="m", backend="x", variant="gpu", task="latency", threads=1,
                   options={"device": "cuda"})
    settings = ClusterSettings.model_validate({"resources": {"pool": 1}, "variants": {
        "gpu": {"labels": {"accelerator": "H100"}, "resources": {"pool": 2}}}})
    asked = placement.request(_unit(cpu, gpu), settings)
    assert (asked.cpus, asked.gpus, asked.resources, asked.labels) == (2.0, 1.0, {"pool": 2}, {"accelerator": "H100"})
    assert asked.ray_options() == {"num_cpus": 2.0, "num_gpus": 1.0, "resources": {"pool": 2},
                                   "label_selector": {"accelerator": "H100"}}
    node = {"Resources": {"CPU": 4, "GPU": 1, "pool": 2}, "Labels": {"accelerator": "H100"}}
    assert asked.fits(node)
    assert not asked.fits({**node, "Labels": {"accelerator": "A100"}})
    assert not asked.fits({**node, "Resources": {"CPU": 4, "pool": 2}})
    assert placement.request(_unit(cpu), ClusterSettings()) == placement.Request(cpus=2.0, gpus=0.0)
    clash = ClusterSettings.model_validate({"variants": {"cpu": {"labels": {"accelerator": "A100"}},
                                                         "gpu": {"labels": {"accelerator": "H100"}}}})
    with pytest.raises(BadInput, match="one label"):
        placement.request(_unit(cpu, gpu), clash)
    with pytest.raises(ValueError, match="cpus / gpus"):
        ClusterSettings.model_validate({"resources": {"GPU": 1}})


def test_a_node_may_send_files_only_into_the_run_folders_a_case_writes(tmp_path):
    run = RunDir(tmp_path, "r")
    write_files(run, {"logs/x.log": b"log", "traces/x/t.json.gz": b"trace"})
    assert (run.path / "traces" / "x" / "t.json.gz").read_bytes() == b"trace"
    for bad in ("../escape", "/etc/passwd", "run.json", "cases.jsonl", "logs/../../x", "", "reference/m/0.npy"):
        with pytest.raises(BadInput, match="outside"):
            safe_path(run, bad)


BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bench.core.cache import build_dir_atomically

    target, count = Path(sys.argv[1]), Path(sys.argv[2])

    def fill(tmp):
        with open(count, "a") as f:
            f.write("built\\n")
        time.sleep(0.5)
        (tmp / "model.bin").write_text("weights")

    out = build_dir_atomically(target, fill, lambda p: (p / "model.bin").is_file())
    print((out / "model.bin").read_text())
""")


def test_the_cache_lock_holds_across_concurrent_processes_so_a_node_builds_once(tmp_path):
    """What preparing a node relies on: four processes that need the same entry at once build it once."""
    started = time.monotonic()
    target, count = tmp_path / "cache" / "entry", tmp_path / "fills"
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(target), str(count)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert [out.strip() for out, _ in outputs] == ["weights"] * 4  # each saw the complete entry
    assert count.read_text() == "built\n"  # and it was built once
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry", "entry.lock"]  # no temp dir left
    assert time.monotonic() - started < 60


def test_preparing_a_machine_builds_models_and_conversions_once_before_any_case(tmp_path, monkeypatch):
    from bench.run import prepare

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))  # no side environment exists there
    built: list[str] = []
    monkeypatch.setattr(prepare, "resolve_model", lambda model, log: built.append(model) or f"/models/{model}")

    class Converting:
        class Options(dict):
            def __init__(self, **kw):
                super().__init__(kw)

        @classmethod
        def prepare(cls, path, options, log):
            built.append(f"convert {path} {dict(options)}")
            if options.get("quant") == "broken":
                raise RuntimeError("no converter")

    monkeypatch.setattr(prepare, "backend_class", lambda name: Converting)
    cases = [CaseSpec(id=f"{v}.{t}", suite="s", model="m", backend="gguf", variant=v, task=t, options={"quant": q})
             for v, q in (("f16", "f16"), ("bad", "broken")) for t in ("latency", "perplexity")]
    cases.append(CaseSpec(id="env", suite="s", model="m", backend="gguf", variant="env", task="latency",
                          interpreter="env:vllm-cpu", options={"quant": "f16"}))
    notes = prepare.prepare(cases, log=lambda line: None)
    assert built == ["m", "convert /models/m {'quant': 'f16'}", "convert /models/m {'quant': 'broken'}"]
    assert any("bad on m: not prepared (RuntimeError: no converter)" in n for n in notes)
    assert any("python -m bench env create vllm-cpu" in n for n in notes) and len(notes) == 2
