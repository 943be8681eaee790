"""Running cases: the plan (`plan`: cases grouped into units), the runner and its local executor (`runner`: timeouts,
resume, the one writer of a run), the interleaved schedule of a latency unit (`interleave`) and each case's record
(`latency_record`), the worker-process handle (`handle`), starting a worker (`spawn`), the worker itself (`worker`)
and its perplexity task (`perplexity_task`), the reference's log-probabilities computed again when they left the
cache (`reference`), the machine prepared once before a run (`prepare`), environment and machine fingerprints
(`environment`), shards (`shard`), and the Ray executor (`cluster/`).

The runner-worker protocol, the task table and the managed side environments are below, in bench/exec/."""
