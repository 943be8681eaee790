"""The gate's result, typed and versioned: what `bench compare` decides, writes (`--json`) and reads back.

bench/gate/compare.py builds a `GateResult`; bench/gate/alerts.py renders it; `compare --confirming FILE`
and `run --only-from FILE` read a written one with `read_result`, which refuses a file that is not one
(exit 2). Format history: 1, the first with a `format_version` (files without one, written before, have
the same fields and are read as format 1). Additive within format 1 (a file written before reads unchanged; a
bench older than an addition refuses a file that has it, since the models forbid unknown fields):
`environment_changes` and `operator_diffs`, what changed around the flagged cases' runs and which of their
operators moved (bench/gate/attribution.py).

Typed, in Python and in the JSON alike (the JSON holds the same strings and numbers as ever):
- `Status`: one comparison's status: a verdict of the rule (bench/gate/rule.py) or "not gated";
- `Verdict`: the outcome of the whole comparison (`GateResult.verdict`, derived from its comparisons and failed
  cases by `judge`), with its `ExitCode` (bench/errors.py) in `EXIT_CODES` and in `GateResult.exit_code`;
- `GateResult.verdict_text`: that outcome in words, as alerts show it ("2 regression(s), 1 inconclusive"); the
  JSON keeps it under its first name, "verdict".
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.errors import BadInput, ExitCode
from bench.gate.envdiff import EnvironmentChange
from bench.gate.opdiff import OperatorDiff
from bench.records.schema import MachineState

FORMAT_VERSION = 1


class Status(str, Enum):
    """One comparison's status (its JSON value is the string): the rule's verdict (bench/gate/rule.py), or not gated
    (a timing without repetitions: shown, never a regression)."""

    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    INCONCLUSIVE = "inconclusive"
    NOT_GATED = "not gated"

    def __str__(self) -> str:  # shown as its value, in f-strings and templates too
        return self.value


FLAGGED: tuple[Status, ...] = (Status.REGRESSION, Status.INCONCLUSIVE)  # what a re-measurement should confirm


class Verdict(str, Enum):
    """The outcome of a whole comparison (`judge`); its exit code is `EXIT_CODES[verdict]`."""

    NO_REGRESSION = "no regression"
    REGRESSION = "regression"
    INCONCLUSIVE = "inconclusive"
    FAILED_CASES = "failed cases"  # a case failed in either run: the gate cannot vouch for the runs
    NO_DATA = "no comparable data"

    def __str__(self) -> str:
        return self.value


EXIT_CODES: dict[Verdict, ExitCode] = {
    Verdict.NO_REGRESSION: ExitCode.OK, Verdict.REGRESSION: ExitCode.REGRESSION,
    Verdict.INCONCLUSIVE: ExitCode.INCONCLUSIVE, Verdict.FAILED_CASES: ExitCode.CASE_FAILED,
    Verdict.NO_DATA: ExitCode.CASE_FAILED}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MachineDifference(_Model):
    """Why the two sides of a timing comparison were measured on machines in materially different states (one
    contended and not the other, other processes' load, CPU or GPU clocks, another process on the GPU): a change
    between them is inconclusive, whatever its interval says (bench/gate/machine.py)."""

    reasons: list[str]  # each with both sides' figures, e.g. "other processes kept 0.08 vs 1.36 CPUs busy"
    baseline: MachineState | None = None
    current: MachineState | None = None


class Comparison(_Model):
    """One metric of one case (or serving level, `case@level`): the two values, the ratio, its interval, verdict."""

    case: str
    variant: str
    metric: str
    unit: str
    better: str
    method: str  # "two-stage bootstrap", "bootstrap" (one process: a serving level's requests), "paired rounds",
    # "threshold only", "not gated"
    baseline: float | None
    current: float | None
    ratio: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n_baseline: int | None = None
    n_current: int | None = None
    threshold: float = 0.0
    status: Status = Status.UNCHANGED
    note: str = ""
    between_run_sigma: float | None = None  # from the history: widened the interval (cross-run only)
    machine: MachineDifference | None = None  # the sides' machine states differ: inconclusive (timing metrics)


class RunRef(_Model):
    run_id: str
    path: str
    suite: str | None = None
    git_sha: str | None = None
    git_branch: str | None = None


class RuleInfo(_Model):
    """The rule the verdicts came from (bench/gate/rule.py `Rule`)."""

    threshold: float
    alpha: float
    n_boot: int
    seed: int
    metric_thresholds: dict[str, float]
    case_thresholds: dict[str, float]
    ci_level: float


class CaseProblem(_Model):
    run: str
    case: str
    reason: str = ""


class NotCompared(_Model):
    case: str
    baseline: str
    current: str


class MetricSummary(_Model):
    geomean_ratio: float
    cases: int
    unit: str
    better: str | None


class Confirmation(_Model):
    """A change the first comparison flagged, and what the re-measurement said about it."""

    case: str
    metric: str
    first: Status
    again: Status | None
    confirmed: bool


class GateResult(_Model):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    format_version: int = FORMAT_VERSION
    baseline: RunRef
    current: RunRef
    rule: RuleInfo
    exit_code: ExitCode  # EXIT_CODES[self.verdict]
    verdict_text: str = Field(alias="verdict")  # the verdict in words (confirmation adds what it confirmed)
    comparisons: list[Comparison]
    flagged: list[str]  # the cases (not levels) with a flagged comparison: what --only-from re-measures
    summary: dict[str, MetricSummary]
    not_compared: list[NotCompared]
    failed: list[CaseProblem]
    skipped: list[CaseProblem]
    only_in_baseline: list[str] = []
    only_in_current: list[str] = []
    within: bool = False  # one run: each variant against its reference
    confirmation: list[Confirmation] = []
    ignored_machine_state: bool = False  # --ignore-machine-state: verdicts did not look at the machine state
    environment_changes: list[EnvironmentChange] = []  # around the flagged cases, most relevant first (envdiff)
    operator_diffs: list[OperatorDiff] = []  # per flagged case: its profiles' operators on both sides (opdiff)

    def with_status(self, *statuses: Status) -> list[Comparison]:
        return [c for c in self.comparisons if c.status in statuses]

    @property
    def verdict(self) -> Verdict:
        return judge(self.comparisons, self.failed)


def judge(comparisons: Sequence[Comparison], failed: Sequence[CaseProblem]) -> Verdict:
    """The outcome of a comparison: failed cases first (the gate cannot vouch for such runs), then no comparable
    data (nothing gated), then any regression, then any inconclusive comparison; else no regression."""
    if failed:
        return Verdict.FAILED_CASES
    statuses = {c.status for c in comparisons}
    if not statuses - {Status.NOT_GATED}:
        return Verdict.NO_DATA
    if Status.REGRESSION in statuses:
        return Verdict.REGRESSION
    if Status.INCONCLUSIVE in statuses:
        return Verdict.INCONCLUSIVE
    return Verdict.NO_REGRESSION


def write_result(result: GateResult) -> str:
    """The JSON text `compare --json` writes (the fields under their JSON names: `verdict_text` as "verdict")."""
    return result.model_dump_json(indent=1, by_alias=True)


def read_result(path: Path, option: str) -> GateResult:
    """A comparison written by `compare --json`; BadInput (exit 2) naming `option` and the file otherwise."""
    try:
        result = GateResult.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError, ValueError) as exc:
        raise BadInput(f"{option} {path}: not a comparison written by compare --json ({_short(exc)})") from None
    if result.format_version > FORMAT_VERSION:
        raise BadInput(f"{option} {path}: comparison format {result.format_version} is newer than this bench "
                       f"reads ({FORMAT_VERSION}); upgrade bench")
    return result


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'file'}: {first['msg']}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
