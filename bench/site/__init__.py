"""The performance dashboard: `python -m bench site` writes a static, self-contained site (docs/dashboard.md).

gather (runs and history) -> verdicts (the gate, run against run) -> one module per view (overview, trend,
compare, quantization, serving) -> build (templates, the vendored plotly.js, files under -o).
"""
