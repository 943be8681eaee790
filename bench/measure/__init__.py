"""What a case measures, each in its own module: latency (with the repetition policy), perplexity,
quality against the reference, memory, bandwidth (MBU), profiling; `stats` derives every summary
from raw samples, and `evaltext` names the evaluation texts."""
