// The inspector of `muxtunnel up`: the recent requests through its http services, with replay.
// Polls /api/requests once a second (see muxtunnel/web/inspector.py).
"use strict";

let selected = null;

function statusClass(status) { return status ? "s" + String(status)[0] + "xx" : ""; }

function renderList(data) {
  document.getElementById("services").textContent =
    Object.entries(data.services).map(([n, l]) => n + " → " + l).join(", ") || "none";
  document.getElementById("recorded").textContent = data.recorded;
  const query = document.getElementById("filter").value.trim().toLowerCase();
  const rows = data.requests.filter((r) => !query ||
    (r.service + " " + r.method + " " + r.target + " " + (r.status || "")).toLowerCase().includes(query));
  document.getElementById("shown").textContent = "(" + rows.length + " of " + data.requests.length + ")";
  document.getElementById("no-requests").style.display = data.requests.length ? "none" : "";
  const body = document.querySelector("#requests tbody");
  body.replaceChildren(...rows.map((r) => {
    const tr = el("tr", { "data-id": r.id, class: r.id === selected ? "selected" : "" },
      el("td", {}, fmtTime(r.started)),
      el("td", {}, r.service),
      el("td", {}, r.method),
      el("td", {}, r.target, r.replay_of ? el("span", { class: "tag" }, " replay of #" + r.replay_of) : ""),
      el("td", { class: statusClass(r.status) }, r.status === null ? (r.error || "…") : r.status),
      el("td", { class: "num" }, r.duration_ms === null ? "" : r.duration_ms.toFixed(1) + " ms"),
      el("td", { class: "num" }, fmtBytes(r.response_bytes)));
    tr.addEventListener("click", () => select(r.id));
    return tr;
  }));
}

function headersBlock(headers) {
  return el("pre", {}, headers.map(([k, v]) => k + ": " + v).join("\n") || "(none)");
}

// JSON bodies kept whole are shown indented; anything else as it came.
function pretty(text, headers) {
  if (text === null) return null;
  const type = (headers.find(([k]) => k.toLowerCase() === "content-type") || ["", ""])[1];
  if (!type.includes("json")) return text;
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
}

function bodyBlock(text, size) {
  if (text === null) return el("pre", { class: "body" }, "(binary, " + fmtBytes(size) + ")");
  const note = size > text.length ? "\n… " + fmtBytes(size) + " in all, cut at the size cap" : "";
  return el("pre", { class: "body" }, (text || "(empty)") + note);
}

async function select(id) {
  selected = id;
  const response = await fetch("/api/requests/" + id);
  const detail = document.getElementById("detail");
  if (!response.ok) { detail.replaceChildren(el("h2", {}, "request"), el("div", { class: "empty" }, "gone from the ring")); return; }
  const r = await response.json();
  const replay = el("button", { id: "replay" }, "Replay");
  if (!r.replayable) replay.setAttribute("disabled", "");
  replay.addEventListener("click", async () => {
    replay.textContent = "Replaying…";
    const answer = await fetch("/api/requests/" + id + "/replay", { method: "POST", headers: { "X-Requested-With": "muxtunnel" } });
    const done = await answer.json();
    replay.textContent = "Replay";
    if (done.id) select(done.id); else alert(done.error);
    refresh();
  });
  detail.replaceChildren(
    el("h2", {}, "#" + r.id + " " + r.method + " " + r.target, " ", replay),
    el("div", {}, r.service + " · from " + r.peer + " · " + fmtTime(r.started) +
      (r.duration_ms === null ? "" : " · " + r.duration_ms.toFixed(1) + " ms") +
      (r.replay_of ? " · replay of #" + r.replay_of : "") + (r.error ? " · " + r.error : "")),
    el("h3", {}, "request headers"), headersBlock(r.request_headers),
    el("h3", {}, "request body"), bodyBlock(pretty(r.request_body, r.request_headers), r.request_bytes),
    el("h3", { class: statusClass(r.status) }, "response " + (r.status === null ? "(none)" : r.status + " " + r.reason)),
    headersBlock(r.response_headers),
    el("h3", {}, "response body"), bodyBlock(pretty(r.response_body, r.response_headers), r.response_bytes));
  renderList({ ...lastData, requests: lastData.requests });
}

let lastData = { services: {}, recorded: 0, requests: [] };

async function refresh() {
  const live = document.getElementById("live");
  try {
    const response = await fetch("/api/requests");
    lastData = await response.json();
    renderList(lastData);
    live.className = "on"; live.textContent = "live";
  } catch (e) {
    live.className = "off"; live.textContent = "reconnecting";
  }
}

document.getElementById("filter").addEventListener("input", () => renderList(lastData));
refresh();
setInterval(refresh, 1000);
