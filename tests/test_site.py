"""The performance dashboard (`python -m bench site`, bench/site) over recorded runs: built from >= 5 runs in
< 10 s, every page loads in headless Chromium with no console error and no network request, and the overview,
a trend page with its change point, the compare view's environment diff, the quantization and the serving
views render what the runs hold. Change points: a known 10 % step is found at its run, an A/A history has none.

The runs are the checked-in format-1 fixture (tests/data/runs/v1-fixture, a real known-answer run) written
again as six format-2 runs a day apart with the project's own writers (RunDir), one variant's decode slowed by
10 % from the fourth run on (raw stamps scaled, samples and summaries re-derived), the last run on a new torch
and driver; plus two runs of a serving suite whose records are built from the schema with known numbers."""
from __future__ import annotations

import json
import re
import shutil
import time

import numpy as np
import pytest

from bench.gate import history
from bench.measure.latency import derive
from bench.records import load_run
from bench.records.rundir import RunDir
from bench.records.schema import (
    SLO,
    CaseRecord,
    CaseSpec,
    LoadLevel,
    Machine,
    ServingInfo,
    ServingLevel,
    ServingSettings,
    Summary,
)
from bench.site.trend import date
from tests.conftest import ROOT, run_bench

pytest.importorskip("plotly", reason="the dashboard copies plotly's bundled plotly.min.js: pip install 'bench[site]'")

FIXTURE = ROOT / "tests" / "data" / "runs" / "v1-fixture"
DAY = 86400.0
T0 = 1_790_000_000.0
STEP_FROM = 3  # runs n3.. have the 10 % slower decode (0-based index of the first slow run)
SLOWED = "slow.synthetic.b1-p8-n6.95c75550"
JITTER = (1.0, 1.004, 0.997, 1.002, 0.998, 1.003)  # run-to-run noise, well below the gate's 5 % minimum effect


def _machine(driver: str, torch: str) -> Machine:
    return Machine(machine_id="5ca1ab1e00c0ffee", hostname="ci-runner", cpu_model="Test CPU", cpu_count=2,
                   memory_bytes=8 * 2**30, gpus=[{"name": "Test GPU", "memory_total_bytes": 16 * 2**30}],
                   gpu_driver=driver, libraries={"torch": torch})


def write_latency_runs(results) -> list[str]:
    """Six runs of the v1 fixture's suite a day apart; SLOWED decodes 10 % slower from run STEP_FROM on."""
    base = load_run(FIXTURE)
    ids = []
    for i, jitter in enumerate(JITTER):
        run_id = f"n{i + 1}"
        newest = i == len(JITTER) - 1
        env = base.meta.environment.model_copy(update={
            "git_sha": f"{i + 1:02d}" * 20, "git_branch": "main",
            "libraries": {**base.meta.environment.libraries, "torch": "2.14.0" if newest else "2.13.0"}})
        meta = base.meta.model_copy(update={"run_id": run_id, "created_at": T0 + i * DAY, "environment": env,
                                            "format_version": 2})
        run = RunDir(results, run_id)
        run.create(meta)
        for record in base.records:
            record = record.model_copy(deep=True, update={"machine": _machine("590.1" if newest else "580.2",
                                                                             env.libraries["torch"])})
            samples = base.samples(record.id)
            if samples is not None and record.workload is not None:
                factor = jitter * (1.10 if record.id == SLOWED and i >= STEP_FROM else 1.0)
                stamps = [[int(s * factor) for s in rep] for rep in samples.stamps_ns]
                samples, metrics = derive(stamps, record.workload.batch_size, record.workload.prompt_tokens)
                record.metrics.update(metrics)
                run.write_samples(record.id, samples)
            if record.ok and record.task == "perplexity" and record.variant == "slow":  # a lossy variant
                record.metrics.update(kld_mean=0.031 if newest else 0.042, delta_ppl=0.28 if newest else 0.35)
            run.append(record)
        ids.append(run_id)
    return ids


# per server: (level key, concurrency, achieved req/s, goodput req/s, TTFT p50, TTFT p99) -- known answers
SERVERS = {
    "llama-server": [("c1", 1, 5.0, 5.0, 20.0, 30.0), ("c2", 2, 9.0, 9.0, 25.0, 40.0),
                     ("c4", 4, 14.0, 12.0, 40.0, 70.0), ("c8", 8, 16.0, 6.0, 90.0, 160.0)],
    "vllm": [("c1", 1, 6.0, 6.0, 15.0, 22.0), ("c2", 2, 11.5, 11.5, 18.0, 28.0),
             ("c4", 4, 21.0, 20.5, 24.0, 45.0), ("c8", 8, 33.0, 27.0, 35.0, 61.0)],
}
SERVING_SLO = SLO(ttft_ms=50.0, tpot_ms=20.0)


def _summary(p50: float, p99: float) -> Summary:
    return Summary(n=16, median=p50, p99=p99, p90=p50 + 0.8 * (p99 - p50), min=p50 / 2, max=p99)


def write_serving_runs(results) -> None:
    for i in range(2):
        run_id = f"serve{i + 1}"
        settings = ServingSettings(levels=[LoadLevel(concurrency=c) for _, c, *_ in SERVERS["vllm"]], slo=SERVING_SLO)
        run = RunDir(results, run_id)
        cases = []
        for server, levels in SERVERS.items():
            spec = CaseSpec(id=f"{server}.tiny.serving", suite="serving", model="tiny-llama", backend=server,
                            variant=server, task="serving", serving=settings)
            info = ServingInfo(server=server, levels=[
                ServingLevel(key=key, label=f"closed loop, {c} users", load=LoadLevel(concurrency=c), metrics={
                    "serve_request_rps": rps, "serve_goodput_rps": good, "serve_slo_fraction": good / rps,
                    "serve_error_rate": 0.0, "serve_ttft_ms": _summary(p50, p99),
                    "serve_tpot_ms": _summary(p50 / 4, p99 / 4), "serve_e2e_ms": _summary(p50 * 8, p99 * 8)})
                for key, c, rps, good, p50, p99 in levels])
            cases.append(CaseRecord(case=spec, status="ok", started_at=T0 + i * DAY, wall_seconds=30.0, serving=info,
                                    machine=_machine("580.2", "2.13.0")))
        from bench.records.schema import RunMeta

        run.create(RunMeta(run_id=run_id, suite_name="serving", created_at=T0 + i * DAY + 3600,
                           case_ids=[c.id for c in cases]))
        for c in cases:
            run.append(c)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Eight runs (six latency/quality, two serving), one HTML report, and the site built by the real CLI."""
    root = tmp_path_factory.mktemp("site")
    results = root / "results"
    write_latency_runs(results)
    write_serving_runs(results)
    # where `bench report n6` writes its HTML report (a stand-in: the link is tested here, the report elsewhere)
    (root / "reports" / "n6").mkdir(parents=True)
    (root / "reports" / "n6" / "report.html").write_text("<!DOCTYPE html><title>n6</title><p>report of n6</p>")
    began = time.monotonic()
    proc = run_bench("site", "--results", "results", "--reports", "reports", "-o", "site", "--cache", "cache",
                     cwd=root)
    return root, time.monotonic() - began, proc.stdout


# ---------------------------------------------------------------- the build

def _site_data(page) -> dict:
    """The inline JSON a page draws from."""
    text = page.read_text()
    block = re.search(r'<script type="application/json" id="site-data">(.*?)</script>', text, re.DOTALL)
    return json.loads(block.group(1))


def _trend_page(site_dir, case_id):
    (page,) = [p for p in (site_dir / "trend").glob("*.html") if case_id in p.name]
    return page


def test_site_builds_from_eight_runs_in_under_10_seconds(site):
    root, seconds, stdout = site
    out = root / "site"
    assert seconds < 10, f"built in {seconds:.1f} s (CLI start included)"
    assert "8 runs (8 loaded, 1 reports)" in stdout and "change point(s)" in stdout, stdout
    assert {p.name for p in out.iterdir()} >= {"index.html", "compare.html", "quantization.html", "serving.html",
                                               "trend", "assets", "reports"}
    plotly = __import__("plotly")
    bundled = __import__("pathlib").Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert (out / "assets" / "plotly.min.js").read_bytes() == bundled.read_bytes()  # vendored, not hand-written
    assert (out / "reports" / "n6" / "report.html").is_file()
    for page in [*out.glob("*.html"), *(out / "trend").glob("*.html")]:
        html = page.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', html), page  # nothing from another host
        assert "assets/plotly.min.js" in html


def test_the_overview_tiles_carry_the_gates_verdict_of_the_newest_pair(site, tmp_path):
    """Known answer: the gate itself (compare_runs, the suite's rule, the history's noise) on n5 -> n6."""
    from bench.gate.compare import compare_runs, rule_from

    root, _, _ = site
    results = root / "results"
    db = tmp_path / "history.sqlite"
    runs = {name: load_run(results / name) for name in ("n1", "n2", "n3", "n4", "n5", "n6")}
    for run in runs.values():
        history.record_run(run, db)
    expected = compare_runs(runs["n5"], runs["n6"], rule_from(runs["n6"]),
                            history=history.noise_lookup(db, runs["n6"]))
    statuses = {(c.case, c.metric): c.status for c in expected.comparisons}
    html = (root / "site" / "index.html").read_text()
    tiles = re.findall(r'<a class="tile"[^>]*data-status="([^"]+)" data-case="([^"]+)" data-metric="([^"]+)"', html)
    ok = [r for r in runs["n6"].records if r.ok]
    from bench.site.overview import HEADLINE

    assert len(tiles) == sum(r.value(m) is not None for r in ok for m in HEADLINE)
    for status, case, metric in tiles:
        assert status == statuses[(case, metric)], (case, metric)
    # the tile's foot: the newest comparison's ratio and interval against the pair's baseline run, its colour the
    # status's (bench/site/verdicts.py `Latest`: the typed comparison, read by attribute)
    from bench.site.common import VERDICT_COLOURS

    slowed = next(c for c in expected.comparisons if c.case == SLOWED and c.metric == "tpot_ms")
    assert slowed.ratio is not None and slowed.ci_low is not None and slowed.ci_high is not None
    tile = re.search(rf'<a class="tile" [^>]*data-case="{re.escape(SLOWED)}" data-metric="tpot_ms"[^>]*>.*?</a>',
                     html, re.DOTALL).group(0)
    assert f"x{slowed.ratio:.3f} [{slowed.ci_low:.3f}, {slowed.ci_high:.3f}] vs n5" in tile
    assert f"border-left-color: {VERDICT_COLOURS[slowed.status]}" in tile


def test_a_trend_page_marks_the_10_percent_step_at_its_run_and_links_reports(site):
    root, _, _ = site
    out = root / "site"
    html = _trend_page(out, SLOWED).read_text()
    marked = set(re.findall(r'class="change-point" data-metric="([^"]+)" data-run="([^"]+)"', html))
    first_slow = f"n{STEP_FROM + 1}"
    assert marked == {(m, first_slow) for m in ("ttft_ms", "tpot_ms", "e2e_ms", "prefill_tok_s", "decode_tok_s")}
    assert "+10.0 %" in html or "+10.1 %" in html or "+9.9 %" in html
    others = [p for p in (out / "trend").glob("*.html") if SLOWED not in p.name]
    assert len(others) == 5 and all('class="change-point"' not in p.read_text() for p in others)
    tpot = _site_data(_trend_page(out, SLOWED))["figures"]["trend-tpot_ms"]
    line = next(t for t in tpot["data"] if t.get("customdata"))
    assert line["customdata"] == [None] * 5 + ["../reports/n6/report.html"]  # each point: its run's report
    # on the time axis, halfway between the last run of the old level and the first of the new one
    assert [s["x0"] for s in tpot["layout"]["shapes"]] == [date(T0 + (STEP_FROM - 0.5) * DAY)]
    assert '<a href="../reports/n6/report.html">report</a>' in html


def _history(path, values: list[float]) -> None:
    """A history database with one case's TPOT over runs (synthetic values, a day apart)."""
    conn = history.connect(path, create=True)
    for i, value in enumerate(values):
        run_id = f"h{i + 1:02d}"
        conn.execute("INSERT INTO runs (run_id, suite, branch, git_commit, dirty, created_at, recorded_at, path, "
                     "n_cases, n_failed, machine) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                     (run_id, "nightly", "main", f"{i:040x}", 0, T0 + i * DAY, T0, "/gone", 1, 0, "m1"))
        conn.execute("INSERT INTO metrics (run_id, case_id, variant, model, task, workload, metric, value, ci_low, "
                     "ci_high, n, machine) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (run_id, "int4.llama.b1", "int4", "llama", "latency", "b1-p64-n64", "tpot_ms", value,
                      value * 0.99, value * 1.01, 40, "m1"))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("step_at, factor", [(6, 1.10), (None, 1.0)], ids=["10-percent-step", "a-a"])
def test_change_points_in_a_synthetic_history(tmp_path, step_at, factor):
    """12 nightly values with 1 % noise (seeded): a 10 % step at the 7th run is found there; A/A finds none."""
    from bench.site.build import build

    noise = np.random.default_rng(7).normal(0, 0.01, 12)
    values = [10.0 * (1 + e) * (factor if step_at is not None and i >= step_at else 1.0) for i, e in enumerate(noise)]
    _history(tmp_path / "h.sqlite", values)
    done = build(None, tmp_path / "h.sqlite", tmp_path / "site")
    html = _trend_page(tmp_path / "site", "int4.llama.b1").read_text()
    marked = re.findall(r'class="change-point" data-metric="([^"]+)" data-run="([^"]+)"', html)
    if step_at is None:
        assert marked == [] and done["change_points"] == 0 and "No change point" in html
    else:
        assert marked == [("tpot_ms", f"h{step_at + 1:02d}")] and done["change_points"] == 1


def test_bad_input_is_one_error_line(tmp_path):
    proc = run_bench("site", "--history", "missing.sqlite", "-o", "out", cwd=tmp_path, check_exit=2)
    assert proc.stderr.startswith("error: ") and "missing.sqlite" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_bench("site", "--max-pairs", "-1", "-o", "out", cwd=tmp_path, check_exit=2)
    assert proc.stderr == "error: --max-pairs must be 0 or more, not -1\n"


# ---------------------------------------------------------------- in a real browser

CHECKER = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(
  String(e.message || (e.target && (e.target.src || e.target.href)) || 'error')), true);
const __consoleError = console.error;
console.error = function () {
  window.__errors.push(Array.from(arguments).join(' '));
  __consoleError.apply(console, arguments);
};
window.addEventListener('load', () => setTimeout(() => {
  const resources = performance.getEntriesByType('resource').map(r => r.name);  // http(s) ones (file: has none)
  document.body.setAttribute('data-errors', window.__errors.length + ': ' + window.__errors.join(' | '));
  document.body.setAttribute('data-remote', resources.filter(n => !n.startsWith('file:')).length);
  document.body.setAttribute('data-plots', document.querySelectorAll('.js-plotly-plot').length);
}, 0));
</script>"""


# Chromium makes requests of its own to Google's services whatever the page (www., accounts., clients2.,
# android.clients.google.com, seen with an empty page too): those are not the page's; any other host would be
def _browser_own(host: str) -> bool:
    return host.endswith(".google.com")


class _Proxy:
    """A proxy Chromium is told to use: every http(s) request made while a page loads connects to it, is recorded
    (its host) and refused."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.hosts: list[str] = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.settimeout(2)
                target = conn.recv(4096).split(b"\r\n")[0].split(b" ")[1].decode()  # CONNECT h:443 / GET http://h/
                self.hosts.append(re.sub(r"^\w+://", "", target).split("/")[0].split(":")[0])
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (OSError, IndexError):
                self.hosts.append("?")
            finally:
                conn.close()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    """Every page of a copy of the site, with an error/request checker first in its head, loaded once in headless
    Chromium behind the recording proxy: {page: its DOM after scripts ran}, the hosts the proxy saw, and a
    screenshot of each page (shots/<page>.png, the same load)."""
    from tests.test_compare import _chromium, _chromium_run

    _chromium()
    root, _, _ = site
    work = tmp_path_factory.mktemp("browser")
    copy = work / "site"
    shutil.copytree(root / "site", copy)
    pages = [*sorted(copy.glob("*.html")), *sorted((copy / "trend").glob("*.html"))]
    for page in pages:
        page.write_text(page.read_text().replace("<head>", "<head>\n" + CHECKER, 1))
    proxy = _Proxy()
    doms = {}
    try:
        (work / "shots").mkdir()
        for page in pages:
            shot = work / "shots" / (page.stem + ".png")
            proc = _chromium_run(page.as_uri(), work, "--virtual-time-budget=5000", "--dump-dom",
                                 f"--proxy-server=http://127.0.0.1:{proxy.port}", "--proxy-bypass-list=<-loopback>",
                                 "--window-size=1400,1400", "--hide-scrollbars", f"--screenshot={shot}")
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert "Uncaught" not in proc.stderr and "CONSOLE" not in proc.stderr, proc.stderr[-2000:]
            doms[page.relative_to(copy).as_posix()] = proc.stdout
    finally:
        proxy.close()
    return copy, doms, proxy.hosts


def _attr(dom: str, name: str) -> str:
    return re.search(rf'<body[^>]*\b{name}="([^"]*)"', dom).group(1)


def test_every_page_loads_in_chromium_with_no_error_and_no_network_request(browser):
    copy, doms, hosts = browser
    assert len(doms) == 10
    for name, dom in doms.items():
        assert _attr(dom, "data-errors") == "0: ", name
        assert _attr(dom, "data-remote") == "0", name  # the page fetched nothing over http(s)
        figures = len(_site_data(copy / name)["figures"])
        assert int(_attr(dom, "data-plots")) == figures, name  # every figure drawn by plotly.js
    assert [h for h in hosts if not _browser_own(h)] == [], hosts  # no connection but the browser's own


def test_the_views_render_what_the_runs_hold(browser):
    copy, doms, _ = browser
    overview, compare, quant, serving = (doms[f"{n}.html"] for n in ("index", "compare", "quantization", "serving"))
    trend = doms[_trend_page(copy, SLOWED).relative_to(copy).as_posix()]
    # overview: a sparkline drawn in each tile, the filters offer the suite
    assert overview.count('class="tile"') == 22 and '<option value="v1fixture">' in overview
    assert len(re.findall(r'class="spark js-plotly-plot"', overview)) == 22
    # trend: the change point drawn on the TPOT plot, with its size
    assert re.search(r"change point \+(9\.9|10\.0|10\.1) %", trend)
    # compare (newest pair by default): the environment diff names torch, the driver and the commit
    changed = set(re.findall(r'<tr class="changed" data-key="([^"]+)"', compare))
    assert changed == {"git sha", "library torch", "machine library torch", "machine GPU driver"}
    assert "4 of 29 environment entries differ" in compare
    assert "2.13.0" in compare and "2.14.0" in compare and "580.2" in compare and "590.1" in compare
    assert re.search(r'id="gate-verdict">Gate: .*exit code', compare) and compare.count('class="verdict"') > 20
    # quantization: the lossy variant's quality, the Pareto front (the reference is faster and exact), the move
    rows = re.findall(r"<tr><td class=\"l\">(\w+)[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>.*?<td class=\"l\">([^<]*)"
                      r"</td><td class=\"l\">([^<]*)</td></tr>", quant)
    by_variant = {r[0]: r for r in rows}
    assert by_variant["slow"][1:3] == ("0.28", "0.031") and by_variant["slow"][3] == ""
    assert by_variant["fast"][1:4] == ("0", "0", "kld_mean, delta_ppl")
    assert "KLD 0.042, Δ PPL 0.35" in by_variant["slow"][4]
    assert len(re.findall(r'class="plot half js-plotly-plot"', quant)) == 4  # two workloads x (KLD, Δ PPL)
    # serving: every level of both servers with its known goodput, the SLOs, four plots
    goodput = re.findall(r'<td class="goodput">([^<]+)</td>', serving)
    assert goodput == [f"{good:g}" for levels in SERVERS.values() for _, _, _, good, _, _ in levels]
    assert "ttft_ms ≤ 50.0" in serving and "tpot_ms ≤ 20.0" in serving
    assert len(re.findall(r'class="plot half js-plotly-plot"', serving)) == 4 and "SLO 50 ms" in serving


SHOTS = ("index", "compare", "quantization", "serving", "trend")


@pytest.mark.parametrize("name", SHOTS)
def test_screenshots_show_the_views(browser, name):
    """Each view as Chromium drew it: a 1400 x 1400 PNG with ink on it (kept next to the site, to look at)."""
    import matplotlib.image

    copy, _, _ = browser
    stem = _trend_page(copy, SLOWED).stem if name == "trend" else name
    shot = copy.parent / "shots" / f"{stem}.png"
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1400, 1400)
    ink = pixels[..., :3].mean(axis=2) < 0.5
    assert pixels[..., :3].std() > 0.05 and ink.mean() > 0.005  # drawn, not blank


# ---------------------------------------------------------------- a year of nights: the cache, dates, the history

def _counting(monkeypatch) -> list:
    """Every pair the gate is run on by the dashboard (bench/site/verdicts.py's compare_runs, the real one)."""
    from bench.site import verdicts

    calls: list = []
    real = verdicts.compare_runs

    def counted(baseline, current, rule, history=None):
        calls.append((baseline.run_id, current.run_id))
        return real(baseline, current, rule, history=history)
    monkeypatch.setattr(verdicts, "compare_runs", counted)
    return calls


@pytest.fixture
def six(tmp_path):
    """The six latency runs a day apart (write_latency_runs), a cache directory and the build, in process."""
    from bench.site.build import build

    results = tmp_path / "results"
    write_latency_runs(results)
    cache = tmp_path / "cache"

    def again():
        return build(results, None, tmp_path / "site", None, cache=cache)
    return results, cache, again


def test_an_unchanged_pair_comes_from_the_cache_and_is_not_computed_again(six, monkeypatch):
    results, cache, again = six
    calls = _counting(monkeypatch)
    first = again()
    assert first["compared_pairs"] == 5 and first["cached_pairs"] == 0 and first["cached_runs"] == 0
    assert calls == [(f"n{i}", f"n{i + 1}") for i in range(1, 6)]
    index = results.parent / "site" / "index.html"
    first_html = index.read_text()
    calls.clear()
    second = again()
    assert calls == [] and second["cached_pairs"] == 5 and second["computed_pairs"] == 0
    assert second["cached_runs"] == 6  # not parsed again either
    assert index.read_text() == first_html  # the same site from the cache
    assert len(list((cache / "verdicts").glob("*.json"))) == 5 and len(list((cache / "runs").glob("*.json"))) == 6


def test_a_changed_run_recomputes_only_the_pairs_it_is_in(six, monkeypatch):
    results, _, again = six
    again()
    calls = _counting(monkeypatch)
    run = RunDir(results, "n3")
    lines = run.cases_path.read_text().splitlines()
    record = CaseRecord.model_validate_json(lines[0])
    record.metrics["peak_rss_bytes"] = (record.value("peak_rss_bytes") or 1) * 2  # the records change
    run.cases_path.write_text("\n".join([record.model_dump_json(exclude_none=True), *lines[1:]]) + "\n")
    done = again()
    assert sorted(calls) == [("n2", "n3"), ("n3", "n4")] and done["cached_pairs"] == 3
    assert done["cached_runs"] == 5  # n3 read again
    calls.clear()
    samples = run.samples_path(SLOWED)  # a raw sample changes: the pairs of that run again, the records are alike
    data = json.loads(samples.read_text())
    data["ttft_ms"][0] *= 1.5
    samples.write_text(json.dumps(data))
    again()
    assert sorted(calls) == [("n2", "n3"), ("n3", "n4")]


def test_a_rule_or_gate_change_makes_every_entry_stale(six, monkeypatch):
    from bench.site import verdict_cache, verdicts

    _, _, again = six
    again()
    calls = _counting(monkeypatch)
    monkeypatch.setattr(verdicts, "rule_from", lambda run: __import__("bench.gate.compare", fromlist=["x"])
                        .rule_from(run, threshold=0.07))  # another threshold: another rule
    again()
    assert len(calls) == 5
    calls.clear()
    monkeypatch.undo()
    calls = _counting(monkeypatch)
    monkeypatch.setattr(verdict_cache, "gate_digest", lambda: "another gate")
    again()
    assert len(calls) == 5


def test_a_history_that_answers_differently_recomputes_the_pair(six, monkeypatch, tmp_path):
    """An entry keeps the between-run noise the gate read; another history (older runs recorded) changes it."""
    from bench.site.build import build

    results, cache, again = six
    again()
    older = tmp_path / "older.sqlite"  # three older runs of the same cases with other values: the noise moves
    conn = history.connect(older, create=True)
    for i, factor in enumerate((0.8, 1.25, 0.9)):
        run = load_run(results / "n1")
        row, metrics = history.rows_of(run)
        run_id = f"old{i}"
        history.store(conn, {**row, "run_id": run_id, "created_at": T0 - (i + 1) * DAY},
                      [(run_id, *m[1:7], m[7] * factor, *m[8:]) for m in metrics])
    conn.commit()
    conn.close()
    calls = _counting(monkeypatch)
    build(results, older, tmp_path / "site2", None, cache=cache)
    assert len(calls) == 5  # every pair's noise now comes from >= 3 runs before it


def test_a_corrupt_cache_entry_is_computed_again_with_a_warning_and_no_traceback(six, monkeypatch, capsys):
    results, cache, again = six
    again()
    entries = sorted((cache / "verdicts").glob("*.json"))
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # torn
    entries[1].write_text('{"format": 1, "key": "another", "payload": {}}')  # another key
    entries[2].write_text(json.dumps({"format": 1, "key": entries[2].stem, "payload": {"result": 1, "asked": []}}))
    run_entry = next((cache / "runs").glob("*.json"))
    run_entry.write_bytes(b"\x00\xff not json")
    capsys.readouterr()
    calls = _counting(monkeypatch)
    done = again()
    err = capsys.readouterr().err
    assert len(calls) == 3 and done["corrupt_entries"] == 4 and "Traceback" not in err
    assert err.count("cache entry") == 4 and str(entries[0]) in err and str(run_entry) in err
    calls.clear()
    assert again()["cached_pairs"] == 5 and calls == []  # rewritten whole
    proc = run_bench("site", "--results", "results", "-o", "site3", "--cache", "cache", cwd=results.parent)
    assert "5 from the cache" in proc.stdout and "Traceback" not in proc.stderr


def test_builds_at_once_share_the_cache(six):
    """Two `bench site` processes started together on an empty cache: both exit 0 with the same site, and the
    cache holds whole entries (each written to a temp file and renamed)."""
    import subprocess
    import sys

    results, cache, _ = six
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "site", "--results", "results", "-o", f"site-{i}",
                               "--cache", "cache"], cwd=results.parent, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("cannot be read" not in err for _, err in outs)
    site = [(results.parent / f"site-{i}" / "index.html").read_text() for i in range(2)]
    assert site[0] == site[1]
    for entry in (cache / "verdicts").glob("*.json"):
        assert json.loads(entry.read_text())["key"] == entry.stem
    assert not list(cache.rglob(".*.tmp"))


def test_trend_data_is_on_a_time_axis_with_a_range_selector_and_hover_fields(site):
    root, _, _ = site
    tpot = _site_data(_trend_page(root / "site", SLOWED))["figures"]["trend-tpot_ms"]
    line = next(t for t in tpot["data"] if t.get("customdata"))
    assert line["x"] == [date(T0 + i * DAY) for i in range(6)]  # each run at its date (UTC)
    xaxis = tpot["layout"]["xaxis"]
    assert xaxis["type"] == "date" and xaxis["rangeslider"]["visible"] is True
    assert [b["label"] for b in xaxis["rangeselector"]["buttons"]] == ["1w", "1m", "3m", "6m", "1y", "all"]
    for i, text in enumerate(line["text"]):
        assert f"run n{i + 1}" in text and f"commit {f'{i + 1:02d}' * 5} on main" in text  # run id, commit, branch
        assert "UTC" in text and " ms [" in text  # date, value and interval


def test_a_year_of_points_keeps_the_trend_page_small_and_the_table_short(tmp_path):
    """365 nights in a history (no run directories): one series of 365 points, on dates, markers small; the runs
    table lists the newest RUN_ROWS; change points found by the O(n) split where the level moves."""
    from bench.site.build import build
    from bench.site.trend import RUN_ROWS

    rng = np.random.default_rng(3)
    values = [10.0 * (1 + rng.normal(0, 0.01)) * (1.1 if i >= 300 else 1.0) for i in range(365)]
    _history(tmp_path / "h.sqlite", values)
    done = build(None, tmp_path / "h.sqlite", tmp_path / "site", cache=None)
    page = _trend_page(tmp_path / "site", "int4.llama.b1")
    tpot = _site_data(page)["figures"]["trend-tpot_ms"]
    line = next(t for t in tpot["data"] if t.get("customdata"))
    assert len(line["x"]) == 365 and line["x"][0] == date(T0) and line["x"][-1] == date(T0 + 364 * DAY)
    assert line["marker"]["size"] < 8
    html = page.read_text()
    assert html.count("<tr><td class=\"l\"><code>h") == RUN_ROWS and f"newest {RUN_ROWS} of 365 runs" in html
    assert done["change_points"] == 1 and 'data-run="h301"' in html


def _record_synthetic(db, n_runs: int, cases: int = 3) -> None:
    conn = history.connect(db, create=True)
    with conn:
        for i in range(n_runs):
            run_id = f"r{i:05d}"
            branch = "main" if i % 3 else "dev"
            history.store(conn, {"run_id": run_id, "suite": "s", "machine": "m", "branch": branch,
                                 "git_commit": f"{i:040x}", "dirty": 0, "created_at": T0 + (i * 7919 % n_runs) * 60,
                                 "recorded_at": T0, "path": f"/gone/{run_id}", "n_cases": cases,
                                 "n_failed": int(i % 50 == 0)},
                          [(run_id, f"c{c}", "v", "model", "latency", "b1", "tpot_ms", 1.0 + (i % 17) / 100 + c,
                            None, None, 1, "m") for c in range(cases)])
    conn.close()


def test_the_history_answers_right_over_many_runs(tmp_path):
    """2,000 runs recorded out of date order: the trend is in date order with every run, `newest` keeps the newest,
    the gate's noise is the newest 20 runs before the date (as the database and in memory), last:BRANCH is the
    newest run without failures on the branch, and the hot queries use indexes."""
    db = tmp_path / "h.sqlite"
    n = 2000
    _record_synthetic(db, n)
    rows = history.trend(db, "s", "tpot_ms", "c1")
    when = [r["created_at"] for r in rows]
    assert len(rows) == n and when == sorted(when)
    newest = history.trend(db, "s", "tpot_ms", newest=100)
    assert len(newest) == 300 and min(r["created_at"] for r in newest) == T0 + (n - 100) * 60
    by_time = sorted(rows, key=lambda r: r["created_at"])
    before = T0 + 1500 * 60
    window = [r["value"] for r in by_time if r["created_at"] < before][-history.HISTORY_RUNS:][::-1]
    expected = history.log_spread(window)
    assert history.between_run_sigma(db, "s", "m", "c1", "tpot_ms", before) == expected
    memory = history.MemoryHistory()
    runs, metrics = history.read_all(db)
    for run in runs:
        memory.add(run, [m for m in metrics if m[0] == run["run_id"]])
    for at in (T0, T0 + 60, T0 + 3 * 60, before, T0 + n * 60):
        for case in ("c0", "c2"):
            assert memory.sigma("s", "m", case, "tpot_ms", at) == history.between_run_sigma(db, "s", "m", case,
                                                                                           "tpot_ms", at)
    main_ok = [r for r in history.list_runs(db) if r["branch"] == "main" and r["n_failed"] == 0]
    assert history.last_run_path("main", db) == __import__("pathlib").Path(main_ok[-1]["path"])
    conn = history.connect(db)
    noise = ("SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.suite = ? AND m.machine = ? AND "
             "m.case_id = ? AND m.metric = ? AND r.created_at < ? AND m.value > 0 ORDER BY r.created_at DESC LIMIT 20")
    trend = ("SELECT m.*, r.created_at FROM runs r JOIN metrics m USING (run_id) WHERE r.suite = ? AND m.metric = ? "
             "ORDER BY r.created_at")
    last = "SELECT path FROM runs WHERE branch = ? AND n_failed = 0 ORDER BY created_at DESC LIMIT 1"
    plans = {q: " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + q, args)) for q, args in [
        (noise, ("s", "m", "c1", "tpot_ms", before)), (last, ("main",)), (trend, ("s", "tpot_ms"))]}
    conn.close()
    for query, plan in plans.items():
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (query, plan)
        assert not re.search(r"SCAN (m|metrics)\b(?! USING)", plan), (query, plan)  # no full scan of the rows


# ---------------------------------------------------------------- the machine-state reason on the dashboard

def test_a_comparisons_machine_state_reason_is_on_its_tile_and_the_compare_page(six, monkeypatch):
    """A comparison the machine-aware gate marked (Comparison.machine, bench/gate/result.py) shows its reasons as
    the tile's note and tooltip and in the compare view's rows."""
    from bench.gate.result import MachineDifference
    from bench.records.schema import MachineState
    from bench.site import verdicts

    results, _, _ = six
    real = verdicts.compare_runs
    reason = "other processes kept 0.08 vs 1.36 CPUs busy (contended on the current side only)"

    def marked(baseline, current, rule, history=None):
        result = real(baseline, current, rule, history=history)
        for c in result.comparisons:
            if c.case == SLOWED and c.metric == "tpot_ms":
                c.status = "inconclusive"
                c.machine = MachineDifference(
                    reasons=[reason],
                    baseline=MachineState(cpus=2, other_cpu_load_mean=0.08, other_cpu_load_max=0.2, contended=False),
                    current=MachineState(cpus=2, other_cpu_load_mean=1.36, other_cpu_load_max=1.9, contended=True))
        return result
    monkeypatch.setattr(verdicts, "compare_runs", marked)
    from bench.site.build import build

    build(results, None, results.parent / "site", None, cache=None)
    html = (results.parent / "site" / "index.html").read_text()
    tile = re.search(rf'<a class="tile"[^>]*data-case="{re.escape(SLOWED)}" data-metric="tpot_ms"[^>]*>.*?</a>',
                     html, re.DOTALL).group(0)
    assert f'title="machine state differs: {reason}"' in tile
    assert f'class="t-note">machine state differs: {reason}' in tile
    assert 'data-status="inconclusive"' in tile
    others = re.findall(r'<a class="tile".*?</a>', html, re.DOTALL)
    assert sum("machine state differs" in t for t in others) == 1
    pair = _site_data(results.parent / "site" / "compare.html")["compare"]["pairs"]["n5..n6"]
    rows = [r for r in pair["rows"] if r["machine"]]
    assert [(r["case"], r["metric"], r["machine"]) for r in rows] == [(SLOWED, "tpot_ms",
                                                                      f"machine state differs: {reason}")]
    from tests.test_compare import _chromium_run

    shutil.which("chromium") or pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    page = results.parent / "site" / "compare.html"  # the newest pair (n5..n6) is the view's default
    dom = _chromium_run(page.as_uri(), results.parent, "--virtual-time-budget=5000", "--dump-dom").stdout
    row = re.search(r'<tr class="verdict" data-status="inconclusive" data-machine="differs">.*?</tr>', dom, re.DOTALL)
    assert row and SLOWED in row.group(0) and f'<div class="machine-note">machine state differs: {reason}</div>' in \
        row.group(0)
    assert dom.count('class="machine-note"') == 1


# ---------------------------------------------------------------- hostile inputs (issue 28)

def _as_run(source, target, run_id: str, day: float) -> None:
    """A copy of run `source` at `target`, named `run_id`, made `day` days after T0."""
    shutil.copytree(source, target, symlinks=True)
    meta = json.loads((target / "run.json").read_text())
    (target / "run.json").write_text(json.dumps({**meta, "run_id": run_id, "created_at": T0 + day * DAY}))


def test_runs_with_links_out_of_them_are_skipped_with_a_warning_and_the_rest_is_built(tmp_path):
    """A run directory that is itself a symbolic link, a run whose records are a link out of it and a run whose raw
    samples are: each skipped with a warning naming it (as a damaged run is), the six good runs built, exit 0, the
    file outside untouched."""
    results = tmp_path / "results"
    write_latency_runs(results)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not touch\n")
    _as_run(results / "n6", outside / "n7", "n7", 6)
    (results / "n7").symlink_to(outside / "n7")  # the run directory is a link
    _as_run(results / "n6", results / "n8", "n8", 7)
    shutil.move(results / "n8" / "cases.jsonl", outside / "cases.jsonl")
    (results / "n8" / "cases.jsonl").symlink_to(outside / "cases.jsonl")  # its records are a link out
    _as_run(results / "n6", results / "n9", "n9", 8)
    sample = results / "n9" / "samples" / f"{SLOWED}.json"
    sample.unlink()
    sample.symlink_to(outside / "secret.txt")  # one raw samples file is a link out
    (results / "n10").mkdir()
    (results / "n10" / "run.json").write_text("{not json")  # and a damaged one, as before
    proc = run_bench("site", "--results", "results", "-o", "site", "--cache", "cache", cwd=tmp_path)
    assert "6 runs (6 loaded" in proc.stdout and "5 pairs compared" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4, proc.stderr
    assert "warning: results/n7: not shown: the run directory is a symbolic link" in proc.stderr
    assert re.search(r"n8: not shown: .*n8/cases.jsonl is a symbolic link .*leaves the run directory", proc.stderr)
    assert re.search(rf"n9: not shown: .*{SLOWED}.json is a symbolic link .*leaves the run directory", proc.stderr)
    assert "n10: not shown:" in proc.stderr and "Traceback" not in proc.stderr
    compare = _site_data(tmp_path / "site" / "compare.html")["compare"]
    assert [r["run_id"] for r in compare["runs"]] == [f"n{i}" for i in range(1, 7)]
    assert (outside / "secret.txt").read_text() == "do not touch\n"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_history_database_is_named_as_the_users_file(tmp_path, damage):
    """`bench site` with a corrupt <results>/history.sqlite: exit 2, one error line naming that file (never a
    scratch copy under a temporary directory), no traceback."""
    results = tmp_path / "results"
    results.mkdir()
    db = results / "history.sqlite"
    if damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 40)
    else:
        _history(db, [10.0 + i / 10 for i in range(200)])
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    proc = run_bench("site", "--results", "results", "-o", "site", cwd=tmp_path, check_exit=2)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert str(db) in proc.stderr or "results/history.sqlite" in proc.stderr, proc.stderr
    assert "bench-site-" not in proc.stderr and "/tmp" not in proc.stderr.replace(str(tmp_path), "")
    assert "Traceback" not in proc.stderr
