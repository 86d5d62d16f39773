// tidegauge dashboard: login with a token (exchanged once for an HttpOnly session cookie), then live data
// over one WebSocket. No framework; Plotly comes from the server (/vendor/plotly.min.js, the plotly wheel's).
"use strict";

const COLORS = ["#2e9d5b", "#e0a100", "#d64545"];
const STATUS = ["normal", "warning", "alert"];
const MAX_ALERT_ROWS = 200;
const ROW_H = 28;  // must match .vrow height in style.css (the list is virtualised on it)
const PLOT_CFG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
const LIVE_CFG = { ...PLOT_CFG, displayModeBar: false };  // overview figures: redrawn every second
const $ = (id) => document.getElementById(id);

const S = {
  page: "overview", ws: null, overview: null, ids: [], types: [], lat: [], lon: [], status: "",
  filtered: [], selected: null, detail: null, mapReady: false, lastAlerts: 0, lastEdge: 0, retry: 0,
};

// ---------------------------------------------------------------------------------------------- helpers
async function api(path, opts = {}) {
  const init = { credentials: "same-origin", headers: {}, ...opts };
  if (opts.body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(opts.body); }
  const r = await fetch(path, init);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  return { ok: r.ok, status: r.status, body };
}
function fmt(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
function fmtMs(v) { return v === null || v === undefined ? "–" : (v < 10 ? fmt(v, 2) : fmt(v, 0)) + " ms"; }
function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  return s < 90 ? `${Math.max(0, Math.round(s))} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}
function layout(extra = {}) {
  return { margin: { l: 48, r: 12, t: 8, b: 30 }, showlegend: false, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
    xaxis: { type: "date", gridcolor: "#eef1f5" }, yaxis: { gridcolor: "#eef1f5", rangemode: "tozero" }, ...extra };
}

// ---------------------------------------------------------------------------------------------- login
async function boot() {
  const who = await api("/api/v1/session");
  if (who.ok) { start(who.body); return; }
  $("login").classList.remove("hidden");
  $("token").focus();
}
$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  $("login-error").textContent = "";
  if (!token) { $("login-error").textContent = "enter a token"; return; }
  const r = await api("/api/v1/session", { method: "POST", body: { token } });
  $("token").value = "";
  if (!r.ok) { $("login-error").textContent = (r.body && r.body.error) || `refused (${r.status})`; return; }
  $("login").classList.add("hidden");
  start(r.body);
});
$("logout").addEventListener("click", async () => {
  await api("/api/v1/session", { method: "DELETE" });
  if (S.ws) S.ws.close();
  location.reload();
});

function start(who) {
  $("app").classList.remove("hidden");
  $("logout").title = `logged in as ${who.name}`;
  window.addEventListener("hashchange", route);
  route();
  loadSensors();
  connect();
}

function route() {
  const page = (location.hash || "#overview").slice(1).split("/")[0];
  S.page = ["overview", "sensors", "alerts", "pipeline", "edge"].includes(page) ? page : "overview";
  document.querySelectorAll(".page").forEach((el) => el.classList.toggle("hidden", el.id !== `page-${S.page}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === S.page));
  if (S.page === "sensors") { drawMap(); renderList(); }
  if (S.page === "alerts") loadAlerts();
  if (S.page === "edge") loadEdge();
  if (S.overview) render(S.overview);
  window.dispatchEvent(new Event("resize"));
}

// ---------------------------------------------------------------------------------------------- live feed
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/live/ws`);
  S.ws = ws;
  ws.onopen = () => {
    S.retry = 0;
    $("conn").textContent = "live"; $("conn").classList.add("live");
    if (S.selected) ws.send(JSON.stringify({ watch: S.selected }));
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "overview") render(msg);
    else if (msg.type === "sensor" && msg.id === S.selected) renderDetail(msg);
  };
  ws.onclose = async () => {
    $("conn").textContent = "reconnecting…"; $("conn").classList.remove("live");
    const who = await api("/api/v1/session");
    if (who.status === 401) { location.reload(); return; }
    S.retry = Math.min(S.retry + 1, 5);
    setTimeout(connect, 1000 * S.retry);
  };
}

async function loadSensors() {
  const r = await api("/api/v1/live/sensors");
  if (!r.ok) return;
  Object.assign(S, { ids: r.body.ids, types: r.body.types, lat: r.body.lat, lon: r.body.lon, mapReady: false });
  applySearch();
  if (S.page === "sensors") drawMap();
}

function render(o) {
  S.overview = o;
  S.status = o.status;
  if (o.sensors > S.ids.length && !S.loading) { S.loading = true; loadSensors().finally(() => { S.loading = false; }); }
  if (S.page === "overview") renderOverview(o);
  else if (S.page === "sensors") { updateMap(); renderList(); }
  else if (S.page === "pipeline") renderPipeline(o.pipeline);
  else if (S.page === "alerts" && Date.now() - S.lastAlerts > 2000) loadAlerts();
  else if (S.page === "edge" && Date.now() - S.lastEdge > 5000) loadEdge();
}

// ---------------------------------------------------------------------------------------------- overview
function renderOverview(o) {
  $("t-rate").textContent = fmt(o.readings_per_s);
  $("t-p50").textContent = fmtMs(o.latency_p50_ms);
  $("t-p99").textContent = fmtMs(o.latency_p99_ms);
  $("t-anom").textContent = fmt(100 * o.anomaly_rate, 2) + " %";
  $("t-sensors").textContent = fmt(o.sensors);
  const firing = Object.values(o.alerts.firing_by_severity || {}).reduce((a, b) => a + b, 0);
  $("t-alerts").textContent = o.alerts.enabled ? fmt(firing) : "off";
  const t = o.series.t.map((x) => new Date(x));
  Plotly.react("c-rate", [{ x: t, y: o.series.readings, type: "scatter", mode: "lines", line: { color: "#2563eb" },
    fill: "tozeroy", fillcolor: "rgba(37,99,235,.08)" }], layout(), LIVE_CFG);
  Plotly.react("c-latency", [
    { x: t, y: o.series.p50_ms, name: "p50", type: "scatter", mode: "lines", line: { color: "#2e9d5b" } },
    { x: t, y: o.series.p99_ms, name: "p99", type: "scatter", mode: "lines", line: { color: "#d64545" } },
  ], layout({ showlegend: true, legend: { orientation: "h", x: 0, y: 1.12 }, yaxis: { type: "log", dtick: 1, gridcolor: "#eef1f5" } }), LIVE_CFG);
  Plotly.react("c-anom", [{ x: t, y: o.series.anomaly_rate.map((v) => 100 * v), type: "scatter", mode: "lines",
    line: { color: "#d64545" } }], layout({ yaxis: { ticksuffix: " %", rangemode: "tozero", gridcolor: "#eef1f5" } }), LIVE_CFG);
  const sev = Object.keys(o.alerts.firing_by_severity || {});
  const sevColor = { critical: "#9b1c1c", major: "#d64545", minor: "#e0a100", warning: "#e0a100", info: "#5b7083" };
  Plotly.react("c-alerts", [{ x: sev, y: sev.map((s) => o.alerts.firing_by_severity[s]), type: "bar",
    marker: { color: sev.map((s) => sevColor[s] || "#5b7083") } }],
  layout({ xaxis: { type: "category" }, yaxis: { rangemode: "tozero", tickformat: "d", nticks: 6, gridcolor: "#eef1f5" } }), LIVE_CFG);
  const sc = o.status_counts;
  Plotly.react("c-status", [{ x: STATUS, y: STATUS.map((s) => sc[s]), type: "bar", marker: { color: COLORS },
    text: STATUS.map((s) => String(sc[s])), textposition: "auto" }],
  layout({ xaxis: { type: "category" } }), LIVE_CFG);
  const tot = o.totals;
  const rows = [["readings", fmt(tot.readings)], ["anomalous readings flagged", fmt(tot.anomalies)],
    ["injected (simulator labels)", fmt(tot.injected)], ["flagged and injected", fmt(tot.true_positives)],
    ["alerts by state", Object.entries(o.alerts.by_state || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "none"]];
  $("totals").innerHTML = rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("");
}

// ---------------------------------------------------------------------------------------------- sensors
function statusOf(i) { const c = S.status.charCodeAt(i) - 48; return c >= 0 && c <= 2 ? c : 0; }

function drawMap() {
  if (S.mapReady || !S.ids.length) return;
  const colors = S.ids.map((_, i) => COLORS[statusOf(i)]);
  Plotly.react("map", [{ x: S.lon, y: S.lat, text: S.ids, type: "scattergl", mode: "markers",
    hovertemplate: "%{text}<extra></extra>", marker: { size: S.ids.length > 2000 ? 4 : 7, color: colors } }],
  { margin: { l: 36, r: 8, t: 4, b: 26 }, showlegend: false, dragmode: "pan",
    xaxis: { range: [-180, 180], gridcolor: "#e6ebf1", zeroline: false, title: { text: "" } },
    yaxis: { range: [-90, 90], gridcolor: "#e6ebf1", zeroline: false, scaleanchor: "x" } }, PLOT_CFG);
  $("map").on("plotly_click", (ev) => { if (ev.points && ev.points.length) select(S.ids[ev.points[0].pointIndex]); });
  S.mapReady = true;
}
function updateMap() {
  if (!S.mapReady) { drawMap(); return; }
  Plotly.restyle("map", { "marker.color": [S.ids.map((_, i) => COLORS[statusOf(i)])] }, [0]);
}

$("search").addEventListener("input", () => { clearTimeout(S.searchTimer); S.searchTimer = setTimeout(applySearch, 120); });
function applySearch() {
  const q = $("search").value.trim().toLowerCase();
  const st = STATUS.indexOf(q);
  S.filtered = [];
  for (let i = 0; i < S.ids.length; i++) {
    if (!q || (st >= 0 ? statusOf(i) === st : S.ids[i].toLowerCase().includes(q) || (S.types[i] || "").toLowerCase().includes(q))) S.filtered.push(i);
  }
  $("list-spacer").style.height = `${S.filtered.length * ROW_H}px`;
  $("list-count").textContent = `${fmt(S.filtered.length)} of ${fmt(S.ids.length)}`;
  renderList();
}
$("list").addEventListener("scroll", () => requestAnimationFrame(renderList));
function renderList() {
  const box = $("list");
  const first = Math.max(0, Math.floor(box.scrollTop / ROW_H) - 5);
  const last = Math.min(S.filtered.length, first + Math.ceil(box.clientHeight / ROW_H) + 10);
  let html = "";
  for (let r = first; r < last; r++) {
    const i = S.filtered[r];
    const s = statusOf(i);
    html += `<div class="vrow${S.ids[i] === S.selected ? " selected" : ""}" data-id="${esc(S.ids[i])}">` +
      `<span class="dot s${s}"></span><span class="id">${esc(S.ids[i])}</span>` +
      `<span class="type">${esc(S.types[i] || "")}</span><span class="st s${s}">${STATUS[s]}</span></div>`;
  }
  const rows = $("list-rows");
  rows.style.top = `${first * ROW_H}px`;
  rows.innerHTML = html;
}
$("list-rows").addEventListener("click", (ev) => { const row = ev.target.closest(".vrow"); if (row) select(row.dataset.id); });

async function select(id) {
  S.selected = id;
  $("detail-empty").classList.add("hidden");
  $("detail-body").classList.remove("hidden");
  $("d-title").textContent = id;
  Plotly.purge("d-history");
  $("h-note").textContent = "";
  renderList();
  if (S.ws && S.ws.readyState === 1) S.ws.send(JSON.stringify({ watch: id }));
  const r = await api(`/api/v1/live/sensors/${encodeURIComponent(id)}`);
  if (r.ok) renderDetail(r.body);
}

function renderDetail(d) {
  S.detail = d;
  $("d-meta").innerHTML = `${esc(d.sensor_type)} · <span class="st s${STATUS.indexOf(d.status)}">${esc(d.status)}</span> · ` +
    `score ${fmt(d.score, 3)} · ${fmt(d.anomalies_total)} anomalous readings · lat ${fmt(d.latitude, 3)}, lon ${fmt(d.longitude, 3)}`;
  const fields = Object.keys(d.series.fields);
  if (!$("h-field").options.length) $("h-field").innerHTML = fields.map((f) => `<option>${esc(f)}</option>`).join("");
  const t = d.series.t.map((x) => new Date(x));
  const traces = [];
  const lay = { margin: { l: 56, r: 12, t: 6, b: 28 }, showlegend: false, grid: { rows: fields.length + 1, columns: 1, pattern: "independent" } };
  const n = fields.length + 1;
  fields.forEach((f, j) => {
    const ax = j === 0 ? "" : String(j + 1);
    const y = d.series.fields[f];
    traces.push({ x: t, y, xaxis: `x${ax}`, yaxis: `y${ax}`, type: "scatter", mode: "lines", name: f, line: { color: "#2563eb", width: 1.5 } });
    const ai = d.series.anomalies.map((a, k) => (a > 0 ? k : -1)).filter((k) => k >= 0);
    traces.push({ x: ai.map((k) => t[k]), y: ai.map((k) => y[k]), xaxis: `x${ax}`, yaxis: `y${ax}`, type: "scatter",
      mode: "markers", name: `${f} anomalies`, marker: { color: "#d64545", symbol: "x", size: 8 }, meta: "anomaly" });
    lay[`yaxis${ax}`] = { title: { text: f.replace("_", " "), font: { size: 11 } }, gridcolor: "#eef1f5" };
    lay[`xaxis${ax}`] = { type: "date", showticklabels: false, gridcolor: "#eef1f5", matches: "x" };
  });
  const ax = String(n);
  traces.push({ x: t, y: d.series.score, xaxis: `x${ax}`, yaxis: `y${ax}`, type: "scatter", mode: "lines", name: "score",
    line: { color: "#d64545", width: 1 }, fill: "tozeroy", fillcolor: "rgba(214,69,69,.12)" });
  lay[`yaxis${ax}`] = { title: { text: "score", font: { size: 11 } }, range: [0, 1.05], gridcolor: "#eef1f5" };
  lay[`xaxis${ax}`] = { type: "date", gridcolor: "#eef1f5", matches: "x" };
  Plotly.react("d-live", traces, lay, PLOT_CFG);
  const w = d.window;
  $("d-window").innerHTML = w ? Object.entries(w).filter(([k]) => !k.startsWith("_")).map(([k, v]) =>
    `<tr><td>${esc(k)}</td><td>${esc(typeof v === "number" ? fmt(v, 3) : v)}</td></tr>`).join("")
    : `<tr><td>no closed window yet</td><td>a window shows here once the watermark has passed its end</td></tr>`;
}

$("h-load").addEventListener("click", loadHistory);
async function loadHistory() {
  if (!S.selected) return;
  const span = Number($("h-range").value);
  const field = $("h-field").value || "temperature";
  const end = new Date(); const start = new Date(end.getTime() - span * 1000);
  const bucket = `${Math.max(1, Math.round(span / 300))}s`;  // ~300 points whatever the range: DuckDB aggregates
  const q = `start=${start.toISOString()}&end=${end.toISOString()}`;
  $("h-note").textContent = "loading…";
  const id = encodeURIComponent(S.selected);
  const [mean, lo, hi, an] = await Promise.all([
    api(`/api/v1/sensors/${id}/series?${q}&window=${bucket}&agg=mean&field=${field}&limit=100000`),
    api(`/api/v1/sensors/${id}/series?${q}&window=${bucket}&agg=min&field=${field}&limit=100000`),
    api(`/api/v1/sensors/${id}/series?${q}&window=${bucket}&agg=max&field=${field}&limit=100000`),
    api(`/api/v1/anomalies?sensor_id=${id}&${q}&limit=2000`),
  ]);
  if (!mean.ok) { $("h-note").textContent = (mean.body && mean.body.error) || `failed (${mean.status})`; return; }
  const rows = mean.body.rows;
  const x = rows.map((r) => new Date(r.window_start));
  const anomalies = an.ok ? an.body.rows : [];
  $("h-note").textContent = `${fmt(rows.length)} buckets of ${bucket} · ${fmt(anomalies.length)} anomalies` +
    (mean.body.note ? ` · ${mean.body.note}` : "");
  Plotly.react("d-history", [
    { x, y: (hi.ok ? hi.body.rows : []).map((r) => r[`${field}_max`]), type: "scatter", mode: "lines", line: { width: 0 }, hoverinfo: "skip" },
    { x, y: (lo.ok ? lo.body.rows : []).map((r) => r[`${field}_min`]), type: "scatter", mode: "lines", line: { width: 0 },
      fill: "tonexty", fillcolor: "rgba(37,99,235,.15)", hoverinfo: "skip" },
    { x, y: rows.map((r) => r[`${field}_mean`]), type: "scatter", mode: "lines", name: `${field} (mean)`, line: { color: "#2563eb" } },
    { x: anomalies.map((r) => new Date(r.timestamp)), y: anomalies.map((r) => r[field]), type: "scatter", mode: "markers",
      name: "anomalies", marker: { color: "#d64545", symbol: "x", size: 8 } },
  ], layout({ yaxis: { title: { text: field, font: { size: 11 } }, gridcolor: "#eef1f5" } }), PLOT_CFG);
}

// ---------------------------------------------------------------------------------------------- alerts
async function loadAlerts() {
  S.lastAlerts = Date.now();
  const [a, s] = await Promise.all([api("/api/v1/alerts"), api("/api/v1/silences")]);
  if (!a.ok) { $("alerts-note").textContent = a.status === 404 ? "alerting is not enabled on this server" : `alerts: ${a.status}`; return; }
  for (const state of ["firing", "pending", "resolved"]) {
    const rows = a.body.alerts.filter((x) => x.state === state);
    // a fleet-wide incident can raise thousands: the newest MAX_ALERT_ROWS are shown, the rest counted
    rows.sort((p, q) => Date.parse(q.fired_at || q.active_since) - Date.parse(p.fired_at || p.active_since));
    const more = rows.length > MAX_ALERT_ROWS ? `<tr><td colspan=7 class="muted">and ${fmt(rows.length - MAX_ALERT_ROWS)} more ${state} alerts</td></tr>` : "";
    $(`alerts-${state}`).innerHTML = rows.length ? alertHead() + rows.slice(0, MAX_ALERT_ROWS).map(alertRow).join("") + more : `<tr><td class="muted">none</td></tr>`;
  }
  const sil = s.ok ? s.body.silences.filter((x) => x.state !== "expired") : [];
  $("silences").innerHTML = sil.length ? "<tr><th>matchers</th><th>state</th><th>ends</th><th>by</th><th></th></tr>" + sil.map((x) =>
    `<tr><td class="labels">${x.matchers.map((m) => `<code>${esc(m)}</code>`).join("")}</td><td>${esc(x.state)}</td>` +
    `<td>${esc(new Date(x.ends_at).toLocaleString())}</td><td>${esc(x.created_by)}</td>` +
    `<td><button class="small ghost" data-expire="${esc(x.id)}">Expire</button></td></tr>`).join("") : `<tr><td class="muted">none</td></tr>`;
  $("alerts-note").textContent = `${a.body.alerts.length} alerts · updated ${new Date().toLocaleTimeString()}`;
}
function alertHead() { return "<tr><th>severity</th><th>rule</th><th>labels</th><th>summary</th><th>since</th><th>acknowledged</th><th></th></tr>"; }
function alertRow(x) {
  const labels = Object.entries(x.labels).filter(([k]) => k !== "alertname" && k !== "severity")
    .map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join("");
  const ack = x.acknowledged ? `<span class="acked">✓ ${esc(x.ack.by)}</span>` : "";
  const muted = x.muted_by ? `<div class="muted">muted: ${esc(x.muted_by)}</div>` : "";
  const buttons = x.state === "resolved" ? "" :
    (x.acknowledged ? `<button class="small ghost" data-unack="${esc(x.fingerprint)}">Unacknowledge</button>`
      : `<button class="small" data-ack="${esc(x.fingerprint)}">Acknowledge</button>`) +
    ` <button class="small ghost" data-silence="${esc(x.fingerprint)}">Silence 1 h</button>`;
  return `<tr data-fingerprint="${esc(x.fingerprint)}"><td><span class="sev sev-${esc(x.severity)}">${esc(x.severity)}</span></td>` +
    `<td>${esc(x.rule)}</td><td class="labels">${labels}</td><td>${esc(x.annotations.summary || "")}${muted}</td>` +
    `<td>${esc(ago(x.fired_at || x.active_since))}</td><td>${ack}</td><td>${buttons}</td></tr>`;
}
$("page-alerts").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  b.disabled = true;
  let r;
  if (b.dataset.ack) r = await api(`/api/v1/alerts/${b.dataset.ack}/ack`, { method: "POST", body: { comment: "acknowledged from the dashboard" } });
  else if (b.dataset.unack) r = await api(`/api/v1/alerts/${b.dataset.unack}/unack`, { method: "POST", body: {} });
  else if (b.dataset.expire) r = await api(`/api/v1/silences/${b.dataset.expire}`, { method: "DELETE" });
  else if (b.dataset.silence) {
    const all = await api("/api/v1/alerts");
    const alert = all.ok ? all.body.alerts.find((x) => x.fingerprint === b.dataset.silence) : null;
    if (alert) {
      const matchers = Object.entries(alert.labels).map(([k, v]) => `${k}="${v}"`);
      r = await api("/api/v1/silences", { method: "POST", body: { matchers, duration: "1h", comment: "silenced from the dashboard" } });
    }
  }
  if (r && !r.ok) $("alerts-note").textContent = (r.body && r.body.error) || `failed (${r.status})`;
  await loadAlerts();
});

// ---------------------------------------------------------------------------------------------- pipeline
function renderPipeline(rows) {
  const head = "<tr><th>step</th><th>kind</th><th>type</th><th>inputs</th><th class=num>records in</th><th class=num>rate in/s</th><th class=num>records out</th>" +
    "<th class=num>queue depth</th><th class=num>watermark lag</th><th class=num>late</th><th class=num>dead-lettered</th><th class=num>checkpoint age</th></tr>";
  $("pipeline").innerHTML = head + rows.map((r) => `<tr><td>${esc(r.id)}</td><td>${esc(r.kind)}</td><td>${esc(r.type)}</td>` +
    `<td>${esc(r.inputs.join(", "))}</td><td class=num>${fmt(r.records_in)}</td><td class=num>${fmt(r.rate_per_s)}</td>` +
    `<td class=num>${fmt(r.records_out)}</td>` +
    `<td class=num>${fmt(r.queue_depth)}</td><td class=num>${r.watermark_lag_s === null ? "–" : fmt(r.watermark_lag_s, 2) + " s"}</td>` +
    `<td class=num>${fmt(r.late)}</td><td class=num>${fmt(r.dead_letters)}</td>` +
    `<td class=num>${r.checkpoint_age_s === null ? "–" : fmt(r.checkpoint_age_s, 1) + " s"}</td></tr>`).join("");
}

// ---------------------------------------------------------------------------------------------- edge
async function loadEdge() {
  S.lastEdge = Date.now();
  const r = await api("/api/v1/edge/agents");
  const list = r.ok && Array.isArray(r.body) ? r.body : (r.ok && r.body && Array.isArray(r.body.agents) ? r.body.agents : []);
  if (!list.length) { $("edge").innerHTML = `<p class="muted" id="edge-empty">no edge agents</p>`; return; }
  const pct = (v) => (v === null || v === undefined ? "–" : fmt(v, 0) + " %");
  const head = "<tr><th>node</th><th>status</th><th>location</th><th>last seen</th><th class=num>availability</th><th class=num>load</th>" +
    "<th class=num>cpu</th><th class=num>memory</th><th class=num>disk</th><th class=num>battery</th><th class=num>outbox</th>" +
    "<th class=num>oldest buffered</th><th>link</th><th>version</th><th class=num>sensors</th></tr>";
  $("edge").innerHTML = `<table class="table">${head}${list.map((a) => `<tr><td>${esc(a.node_id)}</td>` +
    `<td><span class="dot s${a.status === "online" ? 0 : 2}" style="display:inline-block"></span> ${esc(a.status)}</td>` +
    `<td>${esc(typeof a.location === "object" && a.location ? JSON.stringify(a.location) : a.location ?? "–")}</td>` +
    `<td>${esc(a.last_seen ? ago(a.last_seen) : "–")}</td><td class=num>${a.availability === undefined ? "–" : fmt(100 * a.availability, 1) + " %"}</td>` +
    `<td class=num>${fmt(a.load, 2)}</td><td class=num>${pct(a.cpu_pct)}</td><td class=num>${pct(a.memory_pct)}</td>` +
    `<td class=num>${pct(a.disk_pct)}</td><td class=num>${pct(a.battery_pct)}</td><td class=num>${fmt(a.outbox_depth)}</td>` +
    `<td class=num>${a.outbox_age_s === undefined || a.outbox_age_s === null ? "–" : fmt(a.outbox_age_s, 0) + " s"}</td>` +
    `<td>${esc(a.link ?? "–")}</td><td>${esc(a.version ?? "–")}</td>` +
    `<td class=num>${fmt(Array.isArray(a.sensors) ? a.sensors.length : a.sensors)}</td></tr>`).join("")}</table>`;
}

boot();
