// meterline's overview page: reads /v1/overview and /v1/budgets with the caller's key.
// The key is kept in sessionStorage and sent as an Authorization header (never a cookie:
// a cookie would ride along with requests other sites forge).
"use strict";

const KEY = "meterline.key";
const $ = (id) => document.getElementById(id);
const PALETTE = ["#4a6fd8", "#d8884a", "#3fa66b", "#b54ad8", "#d84a6f", "#4ab8d8",
                 "#8a8f3c", "#6b4a2f", "#888888"];

function key() { return sessionStorage.getItem(KEY) || ""; }

function headers() {
  const k = key();
  return k ? { Authorization: "Bearer " + k } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) {
    const error = new Error("a key is needed");
    error.login = true;
    throw error;
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${response.status} ${detail}`);
  }
  return response.json();
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, render) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    render(tr, item);
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, "none");
    td.colSpan = $(tableId).querySelectorAll("th").length;
    body.appendChild(tr);
  }
}

// A link to an API URL: followed with the key (a plain link would carry none).
function apiLink(anchor, url, filename) {
  anchor.href = url;
  anchor.onclick = async (event) => {
    event.preventDefault();
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) { $("status").textContent = `${url}: ${response.status}`; return; }
    const blob = await response.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = filename;
    link.click();
    URL.revokeObjectURL(link.href);
  };
}

function chart(target, days, series, currency) {
  target.replaceChildren();
  const names = Object.keys(series);
  if (!names.length || !window.uPlot) { target.textContent = "no billed usage"; return; }
  const xs = days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
  const data = [xs, ...names.map((n) => series[n].map(Number))];
  const opts = {
    width: Math.max(600, Math.min(1200, document.body.clientWidth - 40)),
    height: 280,
    scales: { x: { time: true } },
    axes: [{}, { values: (u, ticks) => ticks.map((v) => v.toFixed(2)), size: 70 }],
    series: [{ label: "day" }, ...names.map((n, i) => ({
      label: n, stroke: PALETTE[i % PALETTE.length], width: 2,
      value: (u, v) => (v == null ? "—" : `${v.toFixed(2)} ${currency}`),
    }))],
  };
  new uPlot(opts, data, target);
}

// A budget's current period in its own time zone, as /v1/budgets computed it.
function periodText(b) {
  if (b.period === "total") return "all time";
  const format = new Intl.DateTimeFormat("en-CA", {
    timeZone: b.timezone || "UTC", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  });
  const local = (iso) => format.format(new Date(iso)).replace(",", "");
  return `${local(b.period_start)} – ${local(b.period_end)} ${b.timezone || "UTC"}`;
}

function render(data, budgets) {
  const period = data.period;
  $("total").textContent = `${data.total} ${data.currency}`;
  $("consumer-count").textContent = String(data.consumers.length);
  $("unpriced-count").textContent = String(data.unpriced_requests);
  apiLink($("export-link"), `/v1/export?period=${period}&format=csv`, `meterline-${period}.csv`);
  apiLink($("export-json"), `/v1/export?period=${period}&format=json`, `meterline-${period}.json`);
  fill("consumers", data.consumers, (tr, c) => {
    tr.dataset.consumer = c.consumer;
    cell(tr, c.consumer || "(unattributed)");
    cell(tr, c.subtotal, "num");
    cell(tr, c.markup, "num");
    cell(tr, c.total, "num total");
    cell(tr, String(c.unpriced_requests), "num");
    const a = document.createElement("a");
    a.textContent = "invoice";
    apiLink(a, c.invoice_url, `invoice-${c.consumer}-${period}.json`);
    cell(tr, "").appendChild(a);
  });
  fill("unpriced", data.unpriced, (tr, u) => {
    cell(tr, u.consumer || "(unattributed)");
    cell(tr, u.provider);
    cell(tr, u.model);
    cell(tr, String(u.requests), "num");
    cell(tr, String(u.input_tokens), "num");
    cell(tr, String(u.output_tokens), "num");
  });
  fill("budgets", budgets, (tr, b) => {
    tr.dataset.budget = `${b.consumer}/${b.feature || ""}/${b.period}`;
    cell(tr, b.consumer || "(unattributed)");
    cell(tr, b.feature || "all");
    cell(tr, b.period);
    cell(tr, periodText(b), "when");
    cell(tr, `${b.spent} ${b.unit}`, "num");
    cell(tr, `${b.limit} ${b.unit}`, "num");
    const used = Number(b.limit) > 0 ? Number(b.spent) / Number(b.limit) : 0;
    const td = cell(tr, "");
    const bar = document.createElement("span");
    bar.className = used >= 1 ? "bar over" : "bar";
    const fillBar = document.createElement("i");
    fillBar.style.width = `${Math.min(100, used * 100).toFixed(1)}%`;
    bar.appendChild(fillBar);
    td.appendChild(bar);
    td.append(` ${(used * 100).toFixed(1)} %`);
  });
  chart($("chart-consumers"), data.days, data.by_consumer, data.currency);
  chart($("chart-models"), data.days, data.by_model, data.currency);
  $("overview").hidden = false;
  $("logout").hidden = !key();
  document.body.dataset.loaded = period;
}

async function show() {
  const period = $("period").value;
  if (!key() && document.body.dataset.key === "required") {  // no request bound to fail
    $("overview").hidden = true;
    $("login").hidden = false;
    return;
  }
  $("status").textContent = "loading…";
  try {
    const [data, budgets] = await Promise.all([
      api(`/v1/overview?period=${encodeURIComponent(period)}`),
      api("/v1/budgets").then((b) => b.budgets),
    ]);
    $("login").hidden = true;
    render(data, budgets);
    $("status").textContent = "";
    history.replaceState(null, "", `?period=${period}`);
  } catch (error) {
    $("overview").hidden = true;
    $("login").hidden = !error.login;
    $("status").textContent = error.login ? "" : String(error.message || error);
  }
}

function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {  // a scripted link: keep the key, drop it from the address
    sessionStorage.setItem(KEY, fragment.get("key"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const asked = new URLSearchParams(location.search).get("period");
  const now = new Date();
  $("period").value = /^\d{4}-\d{2}$/.test(asked || "") ? asked
    : `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}`;
  $("period-form").onsubmit = (e) => { e.preventDefault(); show(); };
  $("login").onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key").value);
    $("key").value = "";
    show();
  };
  $("logout").onclick = () => { sessionStorage.removeItem(KEY); location.reload(); };
  show();
}

document.addEventListener("DOMContentLoaded", start);
