"""Writes the site: one HTML file per view (jinja2 templates in bench/site/templates/), plotly.js copied from
the installed `plotly` package (extra `site`) into assets/, each run's HTML report copied into reports/.

Every page carries its data and figures inline (a JSON block), so the site works from file:// and GitHub
Pages alike and requests nothing from the network when viewed.
"""
from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import jinja2

from bench.errors import BadInput
from bench.records import outputs, safe_files
from bench.site import compare, overview, quantization, serving, trend
from bench.site.gather import gather
from bench.site.verdict_cache import VerdictCache
from bench.site.verdicts import MAX_PAIRS, consecutive_pairs, latest_verdicts

STATIC = ("site.css", "site.js")


class SiteError(BadInput):
    """The site cannot be built (plotly missing, output not writable): exit code 2."""


def plotly_js() -> Path:
    """plotly.min.js as the `plotly` Python package bundles it."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise SiteError("the dashboard needs the Python package 'plotly' (its bundled plotly.min.js): "
                        "pip install 'bench[site]'")
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise SiteError(f"plotly is installed but has no bundled {path}: pip install --force-reinstall plotly")
    return path


def _finite(value):
    """JSON has no NaN or infinity (JSON.parse rejects them): a non-finite number is shown as a gap (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _dumps(obj, **kw) -> str:
    """JSON for a page: as is when every number is finite (the usual case, one pass), else with gaps."""
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False, **kw)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bench.site", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.policies["json.dumps_function"] = _dumps
    return env


def build(results: Path | None, history_db: Path | None, out: Path, reports: Path | None = None,
          max_pairs: int = MAX_PAIRS, cache: Path | None = None) -> dict:
    """Build the site under `out`; returns what was written (pages, runs, pairs, cache use, seconds).
    `cache`: the dashboard's cache directory (bench/site/store.py: run summaries and pair verdicts), None for none."""
    started = time.monotonic()
    script = plotly_js()
    data = gather(results, history_db, reports, keep=max_pairs + 1, cache=cache)
    verdict_cache = VerdictCache(cache)
    pairs = consecutive_pairs(data, max_pairs, verdict_cache)
    for store in (verdict_cache.store, data.summaries):
        store.prune()
    verdicts = latest_verdicts(pairs)
    out = Path(out)
    try:  # each file whole or not at all, never through a link planted in `out` (bench/records/safe_files.py)
        safe_files.write_text(out / outputs.SITE_MARKER, out, "built by python -m bench site\n")
        safe_files.write_bytes(out / "assets" / "plotly.min.js", out, script.read_bytes())
        for name in STATIC:
            safe_files.write_bytes(out / "assets" / name, out, (Path(__file__).parent / "templates" / name)
                                   .read_bytes())
        for run_id, path in data.reports.items():
            safe_files.write_bytes(out / "reports" / run_id / "report.html", out, path.read_bytes())
        safe_files.makedirs(out / "trend", out)
    except OSError as exc:
        raise SiteError(f"cannot write the site under {out}: {exc.strerror or exc}") from None
    links = {run_id: f"reports/{run_id}/report.html" for run_id in data.reports}
    env = _env()
    written = []
    views = {
        "index.html": ("overview.html.j2", overview.context(data, verdicts)),
        "compare.html": ("compare.html.j2", compare.context(list(data.runs.values()), pairs, links)),
        "quantization.html": ("quantization.html.j2", quantization.context(data.kept)),
        "serving.html": ("serving.html.j2", serving.context(data.kept)),
    }
    for name, (template, context) in views.items():
        _write(out / name, out, env.get_template(template).render(root="", page=name, **context))
        written.append(name)
    change_points = 0
    for page in trend.pages(data, {k: f"../{v}" for k, v in links.items()}):  # one page in memory at a time
        _write(out / page["file"], out, env.get_template("trend.html.j2").render(
            root="../", page="trend", case=page, figures=page["figures"]))
        written.append(page["file"])
        change_points += len(page["change_points"])
    return {"out": str(out), "pages": written, "runs": len(data.run_rows), "loaded_runs": len(data.runs),
            "compared_pairs": len(pairs), "cached_pairs": verdict_cache.store.stats.hits,
            "computed_pairs": len(pairs) - verdict_cache.store.stats.hits,
            "cached_runs": data.summaries.stats.hits,
            "corrupt_entries": verdict_cache.store.stats.corrupt + data.summaries.stats.corrupt,
            "reports": len(data.reports), "change_points": change_points, "seconds": time.monotonic() - started}


def _write(path: Path, out: Path, text: str) -> None:
    try:
        safe_files.write_text(path, out, text)
    except OSError as exc:
        raise SiteError(f"cannot write {path}: {exc.strerror or exc}") from None
