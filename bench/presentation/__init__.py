"""What the report, the dashboard and the gate's alerts show alike, below all three (ARCHITECTURE.md "Layers").

- `table`: the table model (`Table`, `Column`, `Cell`) and its Markdown rendering, user text escaped
  (bench/core/markdown.py): the report's tables and the gate's alert tables.
- `formatting`: `fmt`, the one way a number is shown (significant digits; integers whole).
- `pareto`: the Pareto front of points on two axes, each with its better direction.
- `pairing`: quality against speed: each latency case with the perplexity case of the same run, model and variant.
"""
