"""The performance dashboard: `python -m bench site` writes a static, self-contained site (docs/dashboard.md).

gather (runs and history, one run at a time) -> verdicts (the gate, run against run) -> one module per view
(overview, trend, compare, quantization, serving; `common`, what they share) -> build (templates, the vendored
plotly.js, files under -o).
store + verdict_cache: the cache that keeps an unchanged run's summary and an unchanged pair's verdicts.
"""
