"""The status page the ingress serves at `/ui`: the degradation level, circuit breakers, stream lag,
cache hit rates per cache level, index size, the versions serving, the explainer's queue and
fallbacks, charts of the last hour (answers/s, p95, the share of each degradation level, from the
replica's own counters), the registry's generations with their gate verdicts, a running
experiment's (a canary's) reward per shown item per arm over time, and a form to try a
recommendation for a user id. One static page; its script reads `v1/status` every two seconds and
posts the form to `v1/recommend` (relative URLs, so it works under any route prefix). The page
itself holds no data: it asks for an API key (admin scope for the status, recommend for the form),
keeps it in the tab's sessionStorage and sends it as `Authorization: Bearer`; `/ui#key=<key>`
fills it in (a URL fragment never reaches the server or its logs)."""

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>recserve status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .5em; }
  h2 { font-size: 1.05em; margin: 1.2em 0 .3em; }
  #result-items .category { color: #666; }
  section { display: inline-block; vertical-align: top; margin: 0 2em 1em 0; }
  table { border-collapse: collapse; }
  td, th { padding: 2px 10px 2px 0; text-align: left; }
  .lv { font-size: 2em; font-weight: bold; }
  .closed, .running { color: #197a19; } .half_open { color: #b8860b; } .open, .stopped { color: #c0392b; }
  #result-error { color: #c0392b; }
  #updated { color: #777; font-size: .9em; }
  svg.chart { background: #fafafa; border: 1px solid #ddd; display: block; margin-bottom: .2em; }
  .legend { font-size: .85em; color: #555; }
  .pass, .first { color: #197a19; } .fail { color: #c0392b; }
</style>
</head>
<body>
<h1>recserve</h1>
<form id="key-form">
  <label>API key <input id="api-key" type="password" size="48" autocomplete="off"
         placeholder="an admin key: recserve keys create --scopes admin"></label>
  <button type="submit">use</button>
</form>
<div id="updated">loading&hellip;</div>
<section>
  <h2>Degradation level</h2>
  <div><span id="level" class="lv">&hellip;</span> <span id="level-name"></span></div>
  <h2>Stream</h2>
  <table>
    <tr><th>lag (events)</th><td id="lag">&hellip;</td></tr>
    <tr><th>staleness (s)</th><td id="staleness">&hellip;</td></tr>
  </table>
  <h2>Index</h2>
  <table>
    <tr><th>version</th><td id="index-version">&hellip;</td></tr>
    <tr><th>shards</th><td id="index-shards">&hellip;</td></tr>
    <tr><th>vectors</th><td id="index-vectors">&hellip;</td></tr>
  </table>
</section>
<section>
  <h2>Circuit breakers</h2>
  <table id="breakers"><tr><th>dependency</th><th>state</th><th>hop</th></tr></table>
  <h2>Cache hit rates</h2>
  <table id="caches"><tr><th>level</th><th>hit rate</th><th>hits</th><th>misses</th></tr></table>
</section>
<section>
  <h2>Versions serving</h2>
  <table id="versions"></table>
  <h2>Explainer</h2>
  <table id="explainer"></table>
</section>
<section id="experiment-section">
  <h2>Experiment <span id="experiment-name">none running</span></h2>
  <table id="experiment"><tr><th>arm</th><th>share</th><th>settings</th><th>answers</th><th>shown</th>
    <th>reward / item [95 %]</th><th>CTR [95 %]</th><th>status</th></tr></table>
</section>
<section id="history-section">
  <h2>The last hour <span class="legend">(this replica, per 10 s)</span></h2>
  <div class="legend">answers / s</div><svg id="chart-rate" class="chart" width="360" height="70"></svg>
  <div class="legend">p95 latency (ms)</div><svg id="chart-p95" class="chart" width="360" height="70"></svg>
  <div class="legend">share of answers at level 0 (green), 1&ndash;2 (amber), 3&ndash;4 (red)</div>
  <svg id="chart-levels" class="chart" width="360" height="70"></svg>
</section>
<section id="generations-section">
  <h2>Generations <span class="legend">serving: <span id="generation-serving">&hellip;</span></span></h2>
  <table id="generations"><tr><th>generation</th><th>state</th><th>gate</th><th>decided</th>
    <th>NDCG@10</th><th>Recall@10</th><th>off-policy reward / item</th></tr></table>
  <h2>Canary reward per shown item <span class="legend">(estimate and 95 % interval per arm)</span></h2>
  <svg id="chart-experiment" class="chart" width="360" height="90"></svg>
  <div id="experiment-legend" class="legend"></div>
</section>
<section>
  <h2>Try a recommendation</h2>
  <form id="try" novalidate>
    <label>user id <input id="user-id" type="number" min="0" required></label>
    <label>k <input id="k" type="number" min="1" max="100" value="10"></label>
    <label><input id="explain" type="checkbox"> explain</label>
    <button id="go" type="submit">recommend</button>
  </form>
  <div id="result-meta"></div>
  <div id="result-error"></div>
  <ol id="result-items"></ol>
</section>
<script>
const LEVELS = ["full personalization", "template explanations", "batch (stale) embeddings",
                "cached personalization", "popular items"];
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text;
  if (cls) td.className = cls; tr.appendChild(td); return td; }
function rows(table, keep) { while (table.rows.length > keep) table.deleteRow(keep); }
function pct(x) { return (100 * x).toFixed(1) + "%"; }
function keyFromHash() {
  if (location.hash.startsWith("#key=")) {
    sessionStorage.setItem("recserve-key", decodeURIComponent(location.hash.slice(5)));
    history.replaceState(null, "", location.pathname);
    return true;
  }
  return false;
}
keyFromHash();
window.addEventListener("hashchange", () => { if (keyFromHash()) refresh(); });
function auth() { const k = sessionStorage.getItem("recserve-key");
  return k ? {"authorization": "Bearer " + k} : {}; }
document.getElementById("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("recserve-key", document.getElementById("api-key").value.trim());
  document.getElementById("api-key").value = ""; refresh();
});
async function refresh() {
  try {
    const r = await fetch("v1/status", {cache: "no-store", headers: auth()});
    if (r.status === 401 || r.status === 403) {
      const out = await r.json();
      document.getElementById("updated").textContent = "enter an API key with the admin scope above (" +
        r.status + ": " + ((out.error || {}).message || "") + ")";
      document.getElementById("updated").dataset.auth = r.status;
      return;
    }
    if (!r.ok) throw new Error("status " + r.status);
    const s = await r.json();
    document.getElementById("level").textContent = s.degradation_level;
    document.getElementById("level-name").textContent = LEVELS[s.degradation_level] || "";
    document.getElementById("lag").textContent = s.stream.lag;
    document.getElementById("staleness").textContent = s.stream.staleness_s;
    document.getElementById("index-version").textContent = s.index.version;
    document.getElementById("index-shards").textContent = s.index.shards;
    const v = Object.values(s.index.vectors || {});
    document.getElementById("index-vectors").textContent = v.length ? v.reduce((a, b) => a + b, 0) : "n/a";
    const bt = document.getElementById("breakers"); rows(bt, 1);
    for (const [dep, b] of Object.entries(s.breakers)) {
      const tr = bt.insertRow(); tr.dataset.dependency = dep;
      cell(tr, dep); cell(tr, b.state, b.state); cell(tr, (s.hops || {})[dep] || "");
    }
    const ct = document.getElementById("caches"); rows(ct, 1);
    for (const [lv, c] of Object.entries(s.cache.levels)) {
      const tr = ct.insertRow(); tr.dataset.level = lv; tr.id = "cache-" + lv;
      cell(tr, lv); cell(tr, pct(c.hit_rate)).className = "rate"; cell(tr, c.hits); cell(tr, c.misses);
    }
    const vt = document.getElementById("versions"); rows(vt, 0);
    for (const [comp, ver] of Object.entries(s.model_versions)) {
      const tr = vt.insertRow(); tr.dataset.component = comp; cell(tr, comp); cell(tr, ver).className = "version";
    }
    const et = document.getElementById("explainer"); rows(et, 0);
    for (const [k, n] of Object.entries(s.explainer || {})) {
      const tr = et.insertRow(); tr.dataset.key = k; cell(tr, k.replace("_", " ")); cell(tr, n);
    }
    const xt = document.getElementById("experiment"); rows(xt, 1);
    const x = s.experiment;
    document.getElementById("experiment-name").textContent = x ? x.name + " (control " + x.control + ")" :
      "none running";
    const ci = (f) => f.estimate === null ? "-" : f.estimate.toFixed(4) +
      (f.lo === null ? "" : " [" + f.lo.toFixed(4) + ", " + f.hi.toFixed(4) + "]");
    for (const [arm, a] of Object.entries((x && x.arms) || {})) {
      const tr = xt.insertRow(); tr.dataset.arm = arm;
      cell(tr, arm); cell(tr, a.share); cell(tr, JSON.stringify(a.settings)); cell(tr, a.answers); cell(tr, a.shown);
      cell(tr, ci(a.reward_per_item)); cell(tr, ci(a.ctr));
      cell(tr, a.status === "running" ? "running" : "stopped: " + a.stopped.reason, a.status);
    }
    extras(s);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("updated").textContent = "status unavailable: " + e.message;
  }
}
document.getElementById("try").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const user = document.getElementById("user-id").value;
  const body = {user_id: Number(user), k: Number(document.getElementById("k").value || 10),
                explain: document.getElementById("explain").checked};
  const list = document.getElementById("result-items"), err = document.getElementById("result-error");
  const meta = document.getElementById("result-meta");
  list.innerHTML = ""; err.textContent = ""; meta.textContent = "asking\u2026";
  try {
    const r = await fetch("v1/recommend", {method: "POST", body: JSON.stringify(body),
      headers: {"content-type": "application/json", "x-session-id": String(user), ...auth()}});
    const out = await r.json();
    if (!r.ok) { meta.textContent = ""; err.textContent = r.status + ": " + ((out.error || {}).message || r.statusText);
                 return; }
    meta.textContent = "level " + out.degradation_level + ", " + out.took_ms + " ms, cache " + out.cache;
    meta.dataset.level = out.degradation_level;
    // the items' titles and categories from the catalogue (GET v1/items); ids alone when it fails
    let entries = {};
    if (out.items.length) {
      try {
        const q = out.items.map(it => "ids=" + it.item_id).join("&");
        const lr = await fetch("v1/items?" + q, {headers: auth()});
        if (lr.ok) for (const e of (await lr.json()).items) entries[e.item_id] = e;
      } catch (e) { /* ids alone */ }
    }
    for (const it of out.items) {
      const li = document.createElement("li"); li.dataset.itemId = it.item_id;
      const e = entries[it.item_id];
      const name = document.createElement("span"); name.className = "title";
      name.textContent = e && e.title ? e.title : "item " + it.item_id;
      li.appendChild(name);
      if (e && e.category) {
        li.dataset.category = e.category;
        const cat = document.createElement("span"); cat.className = "category"; cat.textContent = " [" + e.category + "]";
        li.appendChild(cat);
      }
      li.appendChild(document.createTextNode(" #" + it.item_id + " (" + it.score.toFixed(3) + ")" +
                       (it.reasons && it.reasons.length ? ": " + it.reasons.join("; ") : "")));
      list.appendChild(li);
    }
  } catch (e) { meta.textContent = ""; err.textContent = "request failed: " + e.message; }
});
const NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) { const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }
// lines: [{ys: [..], color}], xs shared; bands: [{lo: [..], hi: [..], color}]
function draw(svg, xs, lines, bands) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), pad = 4;
  const all = [].concat(...lines.map(l => l.ys), ...(bands || []).map(b => b.lo.concat(b.hi)))
    .filter(v => v !== null && isFinite(v));
  svg.dataset.points = xs.length;
  if (!xs.length || !all.length) {
    const t = svgEl("text", {x: 8, y: H / 2, fill: "#999", "font-size": 11}); t.textContent = "no data yet";
    svg.appendChild(t); return;
  }
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(0, ...all), y1 = Math.max(...all, y0 + 1e-9);
  const X = (x) => pad + (W - 2 * pad) * (x - x0) / (x1 - x0), Y = (y) => H - pad - (H - 2 * pad) * (y - y0) / (y1 - y0);
  for (const b of bands || []) {
    const pts = xs.map((x, i) => [x, b.hi[i]]).concat(xs.map((x, i) => [x, b.lo[i]]).reverse())
      .filter(p => p[1] !== null).map(p => X(p[0]) + "," + Y(p[1])).join(" ");
    svg.appendChild(svgEl("polygon", {points: pts, fill: b.color, "fill-opacity": 0.15, stroke: "none"}));
  }
  for (const l of lines) {
    const pts = xs.map((x, i) => [x, l.ys[i]]).filter(p => p[1] !== null).map(p => X(p[0]) + "," + Y(p[1]));
    svg.appendChild(svgEl("polyline", {points: pts.join(" "), fill: "none", stroke: l.color, "stroke-width": 1.5}));
  }
  const t = svgEl("text", {x: W - pad, y: 12, fill: "#666", "font-size": 10, "text-anchor": "end"});
  t.textContent = "max " + (+y1.toPrecision(3)); svg.appendChild(t);
}
function fig(f) { return f && typeof f.relative === "number" ? (f.relative >= 0 ? "+" : "") + pct(f.relative) : "-"; }
function extras(s) {
  const h = (s.history || {}).points || [];
  const xs = h.map(p => p.t);
  draw(document.getElementById("chart-rate"), xs, [{ys: h.map(p => p.answers_per_s), color: "#2c6fbb"}]);
  draw(document.getElementById("chart-p95"), xs, [{ys: h.map(p => p.p95_ms), color: "#8e44ad"}]);
  draw(document.getElementById("chart-levels"), xs, [
    {ys: h.map(p => p.levels[0]), color: "#197a19"},
    {ys: h.map(p => p.levels[1] + p.levels[2]), color: "#b8860b"},
    {ys: h.map(p => p.levels[3] + p.levels[4]), color: "#c0392b"}]);
  document.getElementById("generation-serving").textContent = s.generation || "not a generation";
  const gt = document.getElementById("generations"); rows(gt, 1);
  for (const g of s.generations || []) {
    const tr = gt.insertRow(); tr.dataset.generation = g.generation;
    cell(tr, g.generation); cell(tr, g.state || "").className = "state";
    cell(tr, g.verdict || "", "verdict " + (g.verdict || ""));
    cell(tr, g.decided_by || (g.verdict === "first" ? "" : "offline"));
    cell(tr, fig((g.figures || {}).ndcg_at_10)); cell(tr, fig((g.figures || {}).recall_at_10));
    const o = g.ope || {};
    cell(tr, o.candidate ? o.candidate.estimate.toFixed(3) + " vs " + o.serving.estimate.toFixed(3) : "-");
  }
  const eh = s.experiment_history || {points: []}, pts = eh.points || [];
  const arms = [...new Set([].concat(...pts.map(p => Object.keys(p.arms))))];
  const colors = ["#2c6fbb", "#d35400", "#197a19", "#8e44ad"];
  const get = (arm, k) => pts.map(p => p.arms[arm] ? p.arms[arm][k] : null);
  draw(document.getElementById("chart-experiment"), pts.map(p => p.t),
    arms.map((a, i) => ({ys: get(a, "estimate"), color: colors[i % 4]})),
    arms.map((a, i) => ({lo: get(a, "lo"), hi: get(a, "hi"), color: colors[i % 4]})));
  document.getElementById("experiment-legend").textContent = eh.experiment ?
    eh.experiment + ": " + arms.map((a, i) => a + " (" + ["blue", "orange", "green", "purple"][i % 4] + ")").join(", ") : "";
}
refresh(); setInterval(refresh, 2000);
</script>
</body>
</html>
"""
