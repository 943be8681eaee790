"""Running a suite's units across several machines: the Ray executor and what it needs.

- `settings`: the suite's optional `cluster:` section (custom resources, node labels, retries);
- `placement`: what one unit asks of a node (CPUs, GPUs, resources, labels), and which nodes fit;
- `bundle`: what travels back from a node per finished case (record, samples, logs, traces, reference);
- `unit_process`: `python -m bench.run.cluster.unit_process`: one unit, run exactly as locally, into a scratch run;
- `node`: the Ray tasks' bodies on a node (prepare the node; run a unit and stream its cases back);
- `ray_executor`: the `Executor` (bench/run/runner.py) that submits units to a cluster and hands each finished case
  to the run's one writer.

Only `ray_executor` imports ray, lazily; nothing here is imported by `python -m bench --help`.
"""
