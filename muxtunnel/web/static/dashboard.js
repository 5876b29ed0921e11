// The dashboard of `muxtunnel listen`: one chart per service, a table per list of status rows.
// Fed by /api/events: a "full" document, then a "tick" a second (see muxtunnel/web/dashboard.py).
"use strict";

const RING_POINTS = 300;
// Sections in this order first; any other list or mapping of the status document follows.
const ORDER = ["services", "sessions", "groups", "rate_limits", "connections", "web", "refusals"];
const FACTS = ["role", "version", "bind", "tls", "uptime_s", "auth_failures"];
const CONNECTIONS_SHOWN = 100;

const charts = new Map(); // service name -> {plot, data, rate}

function chartFor(name) {
  let chart = charts.get(name);
  if (chart) return chart;
  const box = document.getElementById("charts");
  box.querySelector(".empty")?.remove();
  const rate = el("span", { class: "rate" }, "");
  const holder = el("div", { class: "chart", "data-service": name }, el("h3", {}, name, rate));
  box.append(holder);
  const opts = {
    width: Math.max(420, holder.clientWidth - 16), height: 180,
    scales: { x: { time: true } },
    axes: [{}, { values: (u, ticks) => ticks.map(fmtRate), size: 90 }],
    series: [
      {},
      { label: "in (to the service)", stroke: getComputedStyle(document.body).getPropertyValue("--in"), width: 2,
        value: (u, v) => v === null ? "" : fmtRate(v) },
      { label: "out (to visitors)", stroke: getComputedStyle(document.body).getPropertyValue("--out"), width: 2,
        value: (u, v) => v === null ? "" : fmtRate(v) },
    ],
  };
  const data = [[], [], []];
  chart = { plot: new uPlot(opts, data, holder), data: data, rate: rate, holder: holder };
  charts.set(name, chart);
  return chart;
}

function addPoint(name, point) {
  const chart = chartFor(name);
  const [t, inBps, outBps, connections] = point;
  chart.data[0].push(t); chart.data[1].push(inBps); chart.data[2].push(outBps);
  if (chart.data[0].length > RING_POINTS) for (const s of chart.data) s.shift();
  chart.rate.textContent = "in " + fmtRate(inBps) + " · out " + fmtRate(outBps) +
    " · " + connections + " conn";
  chart.holder.dataset.inBps = inBps;
  chart.holder.dataset.outBps = outBps;
}

function redrawCharts(services) {
  for (const [name, chart] of charts) {
    if (!services.includes(name)) { chart.plot.destroy(); chart.holder.remove(); charts.delete(name); }
    else chart.plot.setData(chart.data);
  }
  if (!charts.size && !document.querySelector("#charts .empty")) {
    document.getElementById("charts").append(el("div", { class: "empty" }, "no service registered"));
  }
}

function renderStatus(status) {
  document.getElementById("version").textContent = status.version;
  document.getElementById("bind").textContent = status.bind + (status.tls ? " (TLS)" : "");
  document.getElementById("uptime").textContent = fmtAge(status.uptime_s);
  document.getElementById("session-count").textContent = (status.sessions || []).length;
  document.getElementById("auth-failures").textContent = status.auth_failures;
  const keys = Object.keys(status).filter((k) => !FACTS.includes(k) &&
    status[k] !== null && typeof status[k] === "object");
  keys.sort((a, b) => (ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99));
  const tables = document.getElementById("tables");
  tables.replaceChildren(...keys.map((k) =>
    statusSection(k, status[k], k === "connections" ? CONNECTIONS_SHOWN : 0)));
  const hidden = status.connections_not_shown;
  if (hidden) {
    document.getElementById("section-connections")
      .append(el("div", { class: "empty" }, "… and " + hidden + " more (the oldest are shown)"));
  }
}

function renderRecent(id, title, rows) {
  const section = document.getElementById(id);
  section.replaceChildren(el("h2", {}, title, " ", el("span", { class: "count" }, "(" + rows.length + ")")));
  section.append(rows.length ? rowsTable(rows) : el("div", { class: "empty" }, "none yet"));
}

function render(doc, full) {
  if (full) {
    for (const chart of charts.values()) { chart.plot.destroy(); chart.holder.remove(); }
    charts.clear();
    for (const [name, points] of Object.entries(doc.series)) for (const p of points) addPoint(name, p);
  } else {
    for (const [name, point] of Object.entries(doc.points)) addPoint(name, point);
  }
  redrawCharts((doc.status.services || []).map((s) => s.name));
  renderStatus(doc.status);
  renderRecent("sessions-recent", "recent sessions", doc.sessions_recent);
  renderRecent("refusals-recent", "recent refusals", doc.refusals_recent);
  document.body.dataset.seq = doc.seq;
}

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.addEventListener("full", (e) => render(JSON.parse(e.data), true));
  events.addEventListener("tick", (e) => render(JSON.parse(e.data), false));
  events.onopen = () => { live.className = "on"; live.textContent = "live"; };
  events.onerror = () => { live.className = "off"; live.textContent = "reconnecting"; };
}

window.addEventListener("resize", () => {
  for (const chart of charts.values()) {
    chart.plot.setSize({ width: Math.max(420, chart.holder.clientWidth - 16), height: 180 });
  }
});

connect();
