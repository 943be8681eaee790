/* bench dashboard (bench/site): draws each page's plotly figures from its inline JSON, and the small
   interactions: overview filters, a trend point opening its run's report, the compare view's two runs. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("site-data").textContent);

  document.querySelectorAll("[data-figure]").forEach(function (div) {
    var fig = data.figures[div.getAttribute("data-figure")];
    if (!fig) { return; }
    var spark = div.classList.contains("spark");
    Plotly.newPlot(div, fig.data, fig.layout, {displaylogo: false, responsive: true, staticPlot: spark,
                                               displayModeBar: spark ? false : "hover"});
    if (!spark) {
      div.on("plotly_click", function (ev) {
        var url = ev.points && ev.points[0] && ev.points[0].customdata;
        if (url) { window.location.href = url; }
      });
    }
  });

  var filters = document.querySelectorAll("[data-filter]");
  function applyFilters() {
    var shown = 0;
    document.querySelectorAll(".tile").forEach(function (tile) {
      var ok = true;
      filters.forEach(function (sel) {
        var want = sel.value;
        if (want && tile.getAttribute("data-" + sel.getAttribute("data-filter")) !== want) { ok = false; }
      });
      tile.classList.toggle("hidden", !ok);
      if (ok) { shown += 1; }
    });
    var count = document.getElementById("shown-count");
    if (count) { count.textContent = shown + " shown"; }
  }
  filters.forEach(function (sel) { sel.addEventListener("change", applyFilters); });

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }
  function table(headers) {
    var t = document.createElement("table");
    var tr = document.createElement("tr");
    headers.forEach(function (h) { var th = document.createElement("th"); th.textContent = h; th.className = "l"; tr.appendChild(th); });
    t.appendChild(tr);
    return t;
  }

  var cmp = data.compare;
  if (cmp) {
    var base = document.getElementById("baseline"), cur = document.getElementById("current");
    var showAll = document.getElementById("show-all");
    if (cmp["default"].length === 2) { base.value = cmp["default"][0]; cur.value = cmp["default"][1]; }
    var render = function () {
      var a = cmp.env[base.value] || {}, b = cmp.env[cur.value] || {};
      var keys = Object.keys(a).concat(Object.keys(b).filter(function (k) { return !(k in a); })).sort();
      var t = table(["what", base.value, cur.value]);
      var changed = 0;
      keys.forEach(function (k) {
        var differs = a[k] !== b[k];
        if (differs) { changed += 1; }
        if (!differs && !showAll.checked) { return; }
        var tr = document.createElement("tr");
        if (differs) { tr.className = "changed"; tr.setAttribute("data-key", k); }
        cell(tr, k, "l"); cell(tr, a[k] === undefined ? "(absent)" : a[k], "l"); cell(tr, b[k] === undefined ? "(absent)" : b[k], "l");
        t.appendChild(tr);
      });
      var env = document.getElementById("env-diff");
      env.textContent = "";
      var p = document.createElement("p");
      p.id = "env-summary";
      p.textContent = changed + " of " + keys.length + " environment entries differ" + (changed ? ":" : ".");
      env.appendChild(p);
      env.appendChild(t);
      var out = document.getElementById("verdicts");
      out.textContent = "";
      var pair = cmp.pairs[base.value + ".." + cur.value];
      var msg = document.createElement("p");
      if (!pair) {
        msg.textContent = "Not precomputed for this pair: python -m bench compare " + base.value + " " + cur.value;
        out.appendChild(msg);
        return;
      }
      msg.id = "gate-verdict";
      msg.textContent = "Gate: " + pair.verdict + " (exit code " + pair.exit_code + ")" +
        (pair.ignored_machine_state ? "; --ignore-machine-state: the verdicts did not look at the machine state" : "");
      out.appendChild(msg);
      var v = table(["case", "variant", "metric", base.value, cur.value, "ratio", "95 % CI", "verdict", "note"]);
      pair.rows.forEach(function (r) {
        var tr = document.createElement("tr");
        tr.className = "verdict";
        tr.setAttribute("data-status", r.status);
        [r.case, r.variant, r.metric + " (" + r.unit + ")", r.baseline, r.current, r.ratio, r.ci].forEach(function (x) { cell(tr, x, "l"); });
        cell(tr, r.status, "l status").style.color = r.colour;
        var note = cell(tr, r.note, "l");
        if (r.machine) {  // the gate's reason: the two sides' machine states differ (bench/gate/result.py)
          var why = document.createElement("div");
          why.className = "machine-note";
          why.textContent = r.machine;
          note.appendChild(why);
          tr.setAttribute("data-machine", "differs");
        }
        v.appendChild(tr);
      });
      out.appendChild(v);
      (pair.attribution || []).forEach(function (t) {  // bench/gate/attribution.py: why the flagged cases moved
        var h = document.createElement(t.level > 4 ? "h4" : "h3");
        h.className = "attribution";
        h.textContent = t.title;
        out.appendChild(h);
        var para = function (text) { var p = document.createElement("p"); p.textContent = text; out.appendChild(p); };
        if (t.lead) { para(t.lead); }
        if (t.headers.length) {
          var tab = table(t.headers);
          t.rows.forEach(function (row) { var tr = document.createElement("tr"); row.forEach(function (x) { cell(tr, x, "l"); }); tab.appendChild(tr); });
          out.appendChild(tab);
        }
        t.notes.forEach(para);
      });
    };
    [base, cur, showAll].forEach(function (el) { el.addEventListener("change", render); });
    render();
  }
}());
