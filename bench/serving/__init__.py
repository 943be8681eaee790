"""Serving benchmarks: real OpenAI-compatible servers (or a named endpoint) under closed- and open-loop load.

`run.run_serving_case` is what the worker calls for a case whose task is `serving`. One module per job:
`procs` (child processes that never outlive bench), `servers` (one class per server kind), `stub` (an SSE
server with a known cadence), `client` (the async streaming client), `prompts` (requests of a stated
length), `load` (arrival schedules, closed and open loops, the sweep), `aggregate` (per-level metrics),
`selfcheck` (the client measured against the stub).
"""
