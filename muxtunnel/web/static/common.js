// Shared by the dashboard and the inspector: formatting and the generic row tables.
"use strict";

function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  const digits = i && Math.abs(n) < 100 ? 1 : 0;
  return n.toFixed(digits) + " " + units[i];
}

function fmtRate(n) { return fmtBytes(n) + "/s"; }

function fmtAge(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function fmtTime(epochS) { return new Date(epochS * 1000).toLocaleTimeString(); }

// One cell: numbers by their key's unit, lists joined, mappings as k=v.
function fmtCell(key, value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.map((v) => fmtCell(key, v)).join(", ");
  if (typeof value === "object") {
    return Object.entries(value).filter(([k, v]) => v !== null && v !== undefined)
      .map(([k, v]) => k + "=" + fmtCell(k, v)).join(" ");
  }
  if (typeof value === "number") {
    if (key.startsWith("bytes") || key.endsWith("_bytes")) return fmtBytes(value);
    if (key.endsWith("_bps")) return fmtRate(value);
    if (key.endsWith("_s")) return fmtAge(value);
    if (key === "time") return fmtTime(value);
  }
  return String(value);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A table of rows (objects): columns are the union of their keys, in order of appearance.
function rowsTable(rows, limit) {
  const columns = [];
  for (const row of rows) for (const key of Object.keys(row)) {
    if (!columns.includes(key)) columns.push(key);
  }
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", {}, c)))));
  const body = el("tbody");
  for (const row of rows.slice(0, limit || rows.length)) {
    body.append(el("tr", {}, ...columns.map((c) => {
      const v = row[c];
      return el("td", { class: typeof v === "number" ? "num" : "", "data-key": c }, fmtCell(c, v));
    })));
  }
  table.append(body);
  return table;
}

// A mapping (reason -> count) as a two-column table.
function mappingTable(mapping) {
  return rowsTable(Object.entries(mapping).map(([k, v]) => ({ name: k, value: v })));
}

// A titled section for any value of a status document: rows, a mapping or a single row.
function statusSection(title, value, limit) {
  const id = "section-" + title;
  const heading = el("h2", {}, title.replace(/_/g, " "));
  const section = el("section", { id: id }, heading);
  if (Array.isArray(value)) {
    heading.append(" ", el("span", { class: "count" }, "(" + value.length + ")"));
    if (!value.length) section.append(el("div", { class: "empty" }, "none"));
    else section.append(rowsTable(value, limit));
    if (limit && value.length > limit) {
      section.append(el("div", { class: "empty" }, "… and " + (value.length - limit) + " more"));
    }
  } else if (value && typeof value === "object") {
    const values = Object.values(value);
    if (values.length && values.every((v) => typeof v === "number")) {
      section.append(mappingTable(value));
    } else if (!values.length) {
      section.append(el("div", { class: "empty" }, "none"));
    } else {
      section.append(rowsTable([value]));
    }
  }
  return section;
}
