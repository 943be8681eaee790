"""What a run writes and how it is read back: typed records (`schema`), the run directory and its one
loader (`rundir`), and the readers of older formats (`upgrade`)."""
from bench.records.rundir import Run, RunDir, RunError, find_run, load_run
from bench.records.schema import FORMAT_VERSION, CaseRecord, CaseSpec, RawSamples, RunMeta

__all__ = ["FORMAT_VERSION", "CaseRecord", "CaseSpec", "RawSamples", "Run", "RunDir", "RunError", "RunMeta",
           "find_run", "load_run"]
