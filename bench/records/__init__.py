"""What a run writes and how it is read back: typed records (`schema`), the run directory and its one
loader (`rundir`), the readers of older formats (`upgrade`), shards merged into one run (`merge`), files
written without following links (`safe_files`) and only where a command may write (`outputs`), and YAML read
with the line of every field (`yaml_lines`: suites, and a format-1 run's suite snapshot)."""
from bench.records.rundir import Run, RunDir, RunError, find_run, load_run
from bench.records.schema import FORMAT_VERSION, CaseRecord, CaseSpec, RawSamples, RunMeta

__all__ = ["FORMAT_VERSION", "CaseRecord", "CaseSpec", "RawSamples", "Run", "RunDir", "RunError", "RunMeta",
           "find_run", "load_run"]
