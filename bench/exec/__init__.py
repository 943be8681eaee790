"""How a case runs in a worker process, below both the runner (bench/run/) and the tasks (bench/serving/):
the runner-worker protocol, the task table, and the managed side environments a worker may run in."""
