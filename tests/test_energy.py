"""Energy per token (bench/measure/energy.py) against counters with known increments: a fake RAPL powercap tree
(files the simulated work writes to, wrapping at max_energy_range_uj) and a fake NVML; the idle baseline is
subtracted; without a counter the case says "no energy counter". This machine has neither RAPL nor a GPU, so the
real counters are not exercised here."""
from __future__ import annotations

import pytest

from bench.measure import energy
from bench.records.schema import CaseRecord
from tests.conftest import KNOWN_ANSWER, record_lines, run_bench, write_suite

IDLE_W = 30.0  # what the machine draws doing nothing
PREFILL_J = 0.8  # above idle, per prefill call (the prompt and one sampling step)
DECODE_J = 0.05  # above idle, per decode step (the whole batch)
GPU_SHARE = 0.75  # of every joule, the GPU's counter gets this share, the CPU package the rest
BATCH, PROMPT, NEW = 2, 8, 9


class Machine:
    """Simulated time and energy: sleeping draws idle power, a generation idle power plus its work."""

    def __init__(self, rapl_dir, start_uj: int, range_uj: int) -> None:
        self.t = 100.0
        self.gpu_mj = 5_000_000.0  # NVML: mJ since the driver loaded
        self.rapl_dir, self.range_uj = rapl_dir, range_uj
        self.uj = start_uj
        self._write()

    def _write(self) -> None:
        (self.rapl_dir / "energy_uj").write_text(str(self.uj))

    def spend(self, seconds: float, joules_above_idle: float) -> None:
        joules = IDLE_W * seconds + joules_above_idle
        self.t += seconds
        self.gpu_mj += GPU_SHARE * joules * 1e3
        self.uj = int(self.uj + (1 - GPU_SHARE) * joules * 1e6) % self.range_uj  # wraps as the kernel's does
        self._write()

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.spend(seconds, 0.0)

    def generate(self, new_tokens: int) -> None:
        self.spend(0.02 + 0.004 * (new_tokens - 1), PREFILL_J + DECODE_J * (new_tokens - 1))


class FakeNvml:
    """The pynvml calls energy.py makes, over one GPU whose counter the simulated machine advances."""

    class NVMLError(Exception):
        pass

    def __init__(self, machine: Machine | None, supported: bool = True) -> None:
        self.machine, self.supported = machine, supported

    def nvmlInit(self):
        if self.machine is None:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetName(self, handle):
        return b"Fake H200"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise self.NVMLError("Not Supported")
        return int(self.machine.gpu_mj)


def powercap(tmp_path, range_uj: int = 262_143_328_850):
    """A powercap tree: package 0 (read), its core sub-zone and a psys zone (both skipped: counted inside/twice)."""
    root = tmp_path / "powercap"
    for zone, name in (("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "core"), ("intel-rapl:1", "psys")):
        (root / zone).mkdir(parents=True)
        (root / zone / "name").write_text(name + "\n")
        (root / zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
        (root / zone / "energy_uj").write_text("0\n")
    return root


@pytest.mark.parametrize("start_fraction", [0.1, 0.999999], ids=["no-wrap", "wraps-during-the-phases"])
def test_known_increments_give_the_known_joules_per_token(tmp_path, start_fraction, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    range_uj = 262_143_328_850
    root = powercap(tmp_path, range_uj)
    machine = Machine(root / "intel-rapl:0", int(start_fraction * range_uj), range_uj)
    found, why_not = energy.counters(root, FakeNvml(machine))
    assert why_not is None
    assert [c.name for c in found] == ["nvml gpu 0 (Fake H200)", "rapl intel-rapl:0 (package-0)"]
    meter = energy.Meter(found, clock=machine.clock, sleep=machine.sleep)
    metrics, info, not_applicable = energy.measure(machine.generate, BATCH, PROMPT, NEW, meter, phase_seconds=1.0)
    assert not_applicable == {}
    assert metrics["energy_idle_w"] == pytest.approx(IDLE_W, rel=1e-6)
    assert metrics["energy_prefill_j_per_token"] == pytest.approx(PREFILL_J / (BATCH * PROMPT), rel=1e-5)
    assert metrics["energy_decode_j_per_token"] == pytest.approx(DECODE_J / BATCH, rel=1e-5)
    assert metrics["energy_decode_tok_per_j"] == pytest.approx(BATCH / DECODE_J, rel=1e-5)
    assert metrics["energy_prefill_tok_per_j"] == pytest.approx(BATCH * PROMPT / PREFILL_J, rel=1e-5)
    # what was measured is kept: the idle baseline (stated), each counter's joules, the phases' calls and time
    assert info.idle_power_w == metrics["energy_idle_w"] and info.idle.seconds == pytest.approx(1.0)
    assert info.prefill.calls >= 1 and info.prefill.seconds >= 1.0 and info.generation.seconds >= 1.0
    gpu, cpu = (info.generation.joules[c] for c in info.counters)
    assert gpu / (gpu + cpu) == pytest.approx(GPU_SHARE, rel=1e-5)


def test_a_counter_that_wraps_is_read_across_the_wrap(tmp_path):
    root = powercap(tmp_path, range_uj=1_000_000)
    zone_dir = root / "intel-rapl:0"
    (zone_dir / "energy_uj").write_text("999900")
    zone = energy.RaplZone(zone_dir)
    (zone_dir / "energy_uj").write_text("50")  # +100 uJ to the top, wrapped, +50 uJ
    assert zone.read_j() == pytest.approx(150e-6)
    (zone_dir / "energy_uj").write_text("400050")
    assert zone.read_j() == pytest.approx(400_150e-6)


def test_without_a_counter_the_case_says_so_and_measures_nothing(tmp_path):
    found, why_not = energy.counters(tmp_path / "no-powercap", FakeNvml(None))
    assert found == [] and why_not.startswith("no energy counter: no NVML GPU (NVMLError); no ")
    empty = tmp_path / "powercap"
    empty.mkdir()
    assert energy.counters(empty, FakeNvml(None))[1].endswith(f"no RAPL package zone under {empty}")
    root = powercap(tmp_path / "pre-volta")  # a GPU without the energy counter (NVMLError_NotSupported)
    gpus, why = energy.nvml_gpus(FakeNvml(Machine(root / "intel-rapl:0", 0, 10**9), supported=False))
    assert gpus == [] and why == "no NVML energy counter (gpu 0: NVMLError)"


ENERGY_SUITE = f"""
name: energy
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: fast, options: {{token_delay_s: 0.0005}}}}
workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
tasks: [latency]
repetitions: {{warmup: 0, min: 2, max: 2, processes: 1}}
perplexity: {{text: eval.txt}}
"""


def _run_case(tmp_path, monkeypatch, powercap_root) -> CaseRecord:
    """The one latency case of ENERGY_SUITE measured by `bench run` (the path users run), with the powercap tree
    at `powercap_root`; its record."""
    monkeypatch.setenv(energy.POWERCAP_ROOT, str(powercap_root))
    (tmp_path / "eval.txt").write_text("text for the known-answer backend " * 20)
    write_suite(tmp_path / "energy.yaml", ENERGY_SUITE)
    run_bench("run", "energy.yaml", "--run-id", "energy", cwd=tmp_path)
    (record,) = record_lines(tmp_path / "results" / "energy")
    return record


def test_the_worker_records_why_there_is_no_energy_and_the_report_says_so(tmp_path, monkeypatch):
    """The real worker path on this machine, with the powercap tree pointed at an empty directory."""
    from bench.report import tables

    record = _run_case(tmp_path, monkeypatch, tmp_path / "none")
    assert record.status == "ok" and record.energy is None
    assert record.not_applicable["energy"].startswith("no energy counter: ")
    assert not any(name.startswith("energy_") for name in record.metrics)
    table = tables.latency_table("t", [tables.Entry("r", record)], False)
    assert any(note.startswith("Energy per token not measured: no energy counter: ") for note in table.notes)
    assert not any(c.metric and c.metric.startswith("energy_") for c in table.columns)


def test_the_worker_measures_energy_with_a_counter_and_the_table_shows_it(tmp_path, monkeypatch):
    """A readable (fake, still) RAPL zone: the worker measures the phases; no energy above idle is resolved, which
    the record says rather than dividing by it. (No NVML here: pynvml is not in the cpu extra, or no GPU.)"""
    from bench.report import tables

    monkeypatch.setenv(energy.PHASE_SECONDS, "0.05")
    record = _run_case(tmp_path, monkeypatch, powercap(tmp_path))
    assert record.energy is not None and "rapl intel-rapl:0 (package-0)" in record.energy.counters
    assert record.energy.prefill.calls >= 1 and record.energy.generation.calls >= 1
    assert record.value("energy_decode_j_per_token") == 0.0 and record.value("energy_idle_w") == 0.0
    assert "no energy above idle was resolved" in record.not_applicable["energy_decode_tok_per_j"]
    table = tables.latency_table("t", [tables.Entry("r", record)], False)
    shown = [c.metric for c in table.columns if c.metric and c.metric.startswith("energy_")]
    assert shown == ["energy_prefill_j_per_token", "energy_decode_j_per_token", "energy_idle_w"]
