"""Serving benchmarks: real OpenAI-compatible servers (or a named endpoint) under closed- and open-loop load.

`run.run_serving_case` is what the worker calls for a case whose task is `serving`. Three subfolders:
`launch/` (server launchers: `procs`, child processes that never outlive bench; `servers`, one class per
server kind; `lifecycle`, start and stop; `llama_launch`; `stub`, an SSE server with a known cadence),
`traffic/` (load generation and the client: `prompts`, requests of a stated length; `shared_prefix`,
requests that begin with the same long prefix; `load`, arrival
schedules, closed and open loops, the sweep; `client`, the async streaming client; `selfcheck`, the client
measured against the stub) and `results/` (`aggregate`, per-level metrics).
"""
