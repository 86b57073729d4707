// swapd's UI: plain JavaScript, no build step, no framework, no network beyond swapd itself.
// Every URL is relative to the page's own root, so the UI works behind a reverse proxy that
// serves swapd under a path prefix. Live data comes from /api/events, read with fetch (not
// EventSource) so that an API key can be sent as a header.
"use strict";

const $ = (selector) => document.querySelector(selector);
// "/ui/" → "/", "/prefix/ui/models" → "/prefix/".
const ROOT = location.pathname.slice(0, location.pathname.lastIndexOf("/ui") + 1) || "/";
const VIEWS = ["models", "logs", "activity", "inflight"];

const state = {
  key: localStorage.getItem("swapd-api-key") || "",
  models: [],
  readySince: new Map(), // model id → ms when this page saw it become ready
  lastUse: new Map(), // model id → ms of its newest activity row
  busy: new Set(), // model ids with a load/unload click in progress
  inflight: new Map(), // id → {entry, seenAt}
  activity: { page: 1, limit: 25, sort: "id", order: "desc", model: "", pending: false },
  logs: { source: "proxy", paused: false, held: "", controller: null },
};

function headers(extra) {
  // X-Requested-With makes swapd answer a missing key without a Basic challenge, so the
  // browser shows no login dialog; the key field below is the way in.
  const result = Object.assign({ "X-Requested-With": "swapd-ui" }, extra || {});
  if (state.key) result.Authorization = "Bearer " + state.key;
  return result;
}

async function api(path, options) {
  options = options || {};
  const response = await fetch(ROOT + path, Object.assign({}, options, { headers: headers(options.headers) }));
  if (response.status === 401) {
    showError("swapd needs an API key: type it in the field at the top.");
    $("#key").focus();
    throw new Error("unauthorized");
  }
  return response;
}

async function apiJson(path) {
  const response = await api(path);
  const body = await response.json();
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// Updates `old` to look like `fresh`, keeping the nodes that already exist, so live updates
// neither move keyboard focus nor replace a button under the pointer.
function morph(old, fresh) {
  if (old.nodeType !== fresh.nodeType || old.nodeName !== fresh.nodeName) {
    old.replaceWith(fresh);
    return;
  }
  if (old.nodeType === Node.TEXT_NODE) {
    if (old.data !== fresh.data) old.data = fresh.data;
    return;
  }
  for (const attribute of [...old.attributes]) {
    if (!fresh.hasAttribute(attribute.name)) old.removeAttribute(attribute.name);
  }
  for (const attribute of fresh.attributes) {
    if (old.getAttribute(attribute.name) !== attribute.value) old.setAttribute(attribute.name, attribute.value);
  }
  const olds = [...old.childNodes];
  const freshes = [...fresh.childNodes];
  freshes.forEach((node, index) => (index < olds.length ? morph(olds[index], node) : old.append(node)));
  for (const node of olds.slice(freshes.length)) node.remove();
}

// Makes `tbody` hold `rows` (each with a data-key), reusing the rows already there.
function syncRows(tbody, rows) {
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  let previous = null;
  for (const fresh of rows) {
    let row = existing.get(fresh.dataset.key);
    if (row) {
      existing.delete(fresh.dataset.key);
      morph(row, fresh);
    } else {
      row = fresh;
    }
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (row !== wanted) tbody.insertBefore(row, wanted);
    previous = row;
  }
  for (const row of existing.values()) row.remove();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const number = (n) => (n < 0 || n === undefined ? "–" : n.toLocaleString("en-US"));
const speed = (n) => (n > 0 ? n.toFixed(1) : "–");

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m " + (seconds % 60) + "s";
  const hours = Math.floor(seconds / 3600);
  if (hours < 48) return hours + "h " + Math.floor((seconds % 3600) / 60) + "m";
  return Math.floor(hours / 24) + "d " + (hours % 24) + "h";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit++; }
  return (unit ? n.toFixed(1) : n) + " " + units[unit];
}

// ---- views ------------------------------------------------------------------------------

function currentView() {
  const name = location.hash.slice(1);
  return VIEWS.includes(name) ? name : "models";
}

function showView() {
  const view = currentView();
  for (const name of VIEWS) {
    $("#view-" + name).hidden = name !== view;
    $("#tab-" + name).setAttribute("aria-selected", String(name === view));
  }
  if (view === "logs") openLog();
  if (view === "activity") loadActivity();
}

// ---- models -----------------------------------------------------------------------------

function ttlLeft(model, now) {
  if (!model.ttl || model.state !== "ready") return "–";
  if (model.inflight > 0) return "busy";
  const since = Math.max(state.readySince.get(model.id) || 0, state.lastUse.get(model.id) || 0);
  if (!since) return "≤ " + duration(model.ttl);
  return "≈ " + duration(model.ttl - (now - since) / 1000);
}

// The capability flags of /v1/models (from a model's `capabilities` block), as short labels.
const CAPABILITY_LABELS = {
  vision: "vision", function_calling: "tools", audio_transcriptions: "speech in",
  audio_speech: "speech out", image_generation: "image out", image_to_image: "image edit",
  reranker: "reranker",
};

function capabilityBadges(model) {
  const flags = model.capabilities || {};
  const labels = Object.keys(CAPABILITY_LABELS).filter((flag) => flags[flag]).map((flag) => CAPABILITY_LABELS[flag]);
  if (model.context_length) labels.push("ctx " + model.context_length);
  if (!labels.length) return null;
  return el("span", { class: "caps" }, ...labels.map((label) => el("span", { class: "cap" }, label)));
}

function renderModels() {
  const now = Date.now();
  const body = $("#models tbody");
  const rows = state.models.filter((m) => !m.unlisted || m.state !== "stopped").map((model) => {
    const stopped = model.state === "stopped";
    const busy = state.busy.has(model.id);
    return el("tr", { "data-key": model.id, "data-model": model.id, "data-state": model.state },
      el("td", {}, el("strong", {}, model.id), model.name ? el("span", { class: "name" }, model.name) : null,
        capabilityBadges(model)),
      el("td", {}, el("span", { class: "state state-" + model.state }, model.state)),
      el("td", { class: "wide" }, (model.aliases || []).join(", ") || "–"),
      el("td", { class: "wide" }, model.group || "–"),
      el("td", { class: "ttl" }, ttlLeft(model, now)),
      el("td", { class: "num wide" }, model.inflight + (model.queued ? " +" + model.queued : "")),
      el("td", {}, el("span", { class: "actions" },
        el("button", { type: "button", "data-action": "load", disabled: !stopped || busy, onclick: () => load(model.id) }, "Load"),
        el("button", { type: "button", "data-action": "unload", disabled: stopped || busy, onclick: () => unload(model.id) }, "Unload"))));
  });
  syncRows(body, rows);
  const select = $("#activity-model");
  const wanted = ["", ...state.models.map((m) => m.id)];
  if ([...select.options].map((o) => o.value).join("\n") !== wanted.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(...wanted.map((id) => el("option", { value: id }, id || "all")));
    select.value = chosen;
  }
  const sources = ["proxy", "upstream", ...state.models.map((m) => m.id)];
  const logSelect = $("#log-source");
  if ([...logSelect.options].map((o) => o.value).join("\n") !== sources.join("\n")) {
    logSelect.replaceChildren(...sources.map((id) => el("option", { value: id }, id)));
    logSelect.value = state.logs.source;
  }
}

function modelPath(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}

async function load(id) {
  state.busy.add(id);
  renderModels();
  try {
    // A request through /upstream/<model>/ starts the model like any other request would;
    // /health is answered by llama-server and most other upstreams without side effects.
    const response = await api("upstream/" + modelPath(id) + "/health");
    if (response.status >= 500) showError("loading " + id + " failed: " + (await response.text()));
    else showError("");
  } catch (error) {
    if (error.message !== "unauthorized") showError("loading " + id + " failed: " + error.message);
  } finally {
    state.busy.delete(id);
    renderModels();
  }
}

async function unload(id) {
  state.busy.add(id);
  renderModels();
  try {
    await api("api/models/unload/" + modelPath(id), { method: "POST" });
  } catch (error) {
    if (error.message !== "unauthorized") showError("unloading " + id + " failed: " + error.message);
  } finally {
    state.busy.delete(id);
    renderModels();
  }
}

function updateModels(models) {
  const now = Date.now();
  for (const model of models) {
    const before = state.models.find((m) => m.id === model.id);
    if (model.state === "ready" && (!before || before.state !== "ready") && before) state.readySince.set(model.id, now);
    if (model.state !== "ready") state.readySince.delete(model.id);
  }
  state.models = models;
  renderModels();
}

// ---- in-flight --------------------------------------------------------------------------

function renderInflight() {
  const now = Date.now();
  const rows = [...state.inflight.values()].sort((a, b) => a.entry.id - b.entry.id).map(({ entry, seenAt }) =>
    el("tr", { "data-key": entry.id, "data-id": entry.id, "data-model": entry.model },
      el("td", { class: "wide" }, String(entry.id)),
      el("td", {}, entry.model),
      el("td", {}, entry.method + " " + entry.req_path),
      el("td", { class: "wide" }, entry.remote_ip || "–"),
      el("td", { class: "num" }, bytes(entry.resp_bytes)),
      el("td", { class: "num" }, duration((entry.elapsed_ms + now - seenAt) / 1000)),
      el("td", {}, el("button", { type: "button", "data-action": "cancel", onclick: () => cancel(entry.id) }, "Cancel"))));
  syncRows($("#inflight tbody"), rows);
  $("#inflight-empty").hidden = rows.length > 0;
  $("#inflight-count").textContent = String(rows.length);
}

async function cancel(id) {
  try {
    const response = await api("api/inflight/" + id + "/cancel", { method: "POST" });
    if (!response.ok) showError("request " + id + " is no longer in flight");
  } catch (error) {
    if (error.message !== "unauthorized") showError("cancel failed: " + error.message);
  }
}

function updateInflight(message) {
  const now = Date.now();
  if (message.operation === "snapshot") {
    state.inflight.clear();
    for (const entry of message.requests || []) state.inflight.set(entry.id, { entry, seenAt: now });
  } else if (message.operation === "upsert") {
    state.inflight.set(message.request.id, { entry: message.request, seenAt: now });
  } else if (message.operation === "remove") {
    state.inflight.delete(message.id);
  }
  renderInflight();
}

// ---- activity ---------------------------------------------------------------------------

async function loadActivity() {
  const a = state.activity;
  const query = new URLSearchParams({ page: a.page, limit: a.limit, sort: a.sort, order: a.order });
  if (a.model) query.set("model", a.model);
  try {
    const [page, stats] = await Promise.all([
      apiJson("api/metrics/activity?" + query),
      apiJson("api/metrics/stats" + (a.model ? "?model=" + encodeURIComponent(a.model) : "")),
    ]);
    renderActivity(page, stats);
  } catch (error) {
    if (error.message !== "unauthorized") showError("activity: " + error.message);
  }
}

function renderActivity(page, stats) {
  const rows = page.data.map((row) => {
    const t = row.tokens;
    return el("tr", { "data-id": row.id, "data-model": row.model },
      el("td", {}, String(row.id)),
      el("td", { title: row.timestamp }, new Date(row.timestamp).toLocaleTimeString()),
      el("td", {}, row.model),
      el("td", {}, row.req_path),
      el("td", { class: row.resp_status_code === 200 ? null : "bad", title: row.error_msg || null }, String(row.resp_status_code)),
      el("td", { class: "num prompt" }, number(t.input_tokens)),
      el("td", { class: "num generated" }, number(t.output_tokens)),
      el("td", { class: "num" }, number(t.cache_tokens)),
      el("td", { class: "num" }, speed(t.prompt_per_second)),
      el("td", { class: "num" }, speed(t.tokens_per_second)),
      el("td", { class: "num" }, (row.duration_ms / 1000).toFixed(2) + "s"));
  });
  $("#activity tbody").replaceChildren(...rows);
  $("#activity-page").textContent = "page " + page.page + " of " + Math.max(1, page.total_pages) + " · " + page.total + " rows";
  $("#activity-prev").disabled = page.page <= 1;
  $("#activity-next").disabled = page.page >= page.total_pages;
  for (const button of document.querySelectorAll("#activity th button")) {
    if (button.dataset.sort === state.activity.sort) button.dataset.active = state.activity.order === "desc" ? "▼" : "▲";
    else delete button.dataset.active;
  }
  const g = stats.gen_histogram;
  const p = stats.prompt_histogram;
  $("#stats").textContent = stats.total_requests + " requests · " + number(stats.total_input_tokens) + " prompt, " +
    number(stats.total_output_tokens) + " generated, " + number(stats.total_cache_tokens) + " cached tokens" +
    (g ? " · generation p50 " + speed(g.p50) + " / p95 " + speed(g.p95) + " t/s" : "") +
    (p ? " · prompt p50 " + speed(p.p50) + " t/s" : "");
  $("#histograms").replaceChildren(...[histogramChart("generation", g), histogramChart("prompt", p)].filter(Boolean));
}

// One speed histogram of /api/metrics/stats as bars: each bar's height is its bin's share of
// the fullest bin, and its title says the bin's range and count.
function histogramChart(kind, h) {
  if (!h) return null;
  const peak = Math.max(1, ...h.bins);
  const bars = h.bins.map((count, i) => {
    const from = h.min + i * h.binSize;
    const bar = el("span", { class: "bar", title: speed(from) + "–" + speed(from + h.binSize) + " t/s: " +
      count + (count === 1 ? " request" : " requests") });
    bar.style.height = Math.max(count > 0 ? 4 : 0, Math.round(count / peak * 100)) + "%";
    return bar;
  });
  return el("figure", { class: "histogram", "data-kind": kind },
    el("div", { class: "bars", role: "img", "aria-label": kind + " speed: " + h.bins.join(", ") +
      " requests per bin from " + speed(h.min) + " to " + speed(h.max) + " tokens per second" }, ...bars),
    el("figcaption", { class: "muted" }, kind + " t/s " + speed(h.min) + " – " + speed(h.max) +
      " · p50 " + speed(h.p50) + " · p95 " + speed(h.p95) + " · p99 " + speed(h.p99)));
}

function activityArrived(row) {
  const time = Date.parse(row.timestamp);
  if (time > (state.lastUse.get(row.model) || 0)) state.lastUse.set(row.model, time);
  if (currentView() !== "activity" || state.activity.pending) return;
  // Rows can arrive in bursts: one reload per half second is plenty.
  state.activity.pending = true;
  setTimeout(() => { state.activity.pending = false; loadActivity(); }, 500);
}

// ---- logs -------------------------------------------------------------------------------

const MAX_LOG_CHARS = 256 * 1024;

function appendLog(text) {
  if (state.logs.paused) {
    state.logs.held = (state.logs.held + text).slice(-MAX_LOG_CHARS);
    $("#log-state").textContent = "paused · " + bytes(state.logs.held.length) + " waiting";
    return;
  }
  const pre = $("#log");
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  let content = pre.textContent + text;
  if (content.length > MAX_LOG_CHARS) content = content.slice(content.indexOf("\n", content.length - MAX_LOG_CHARS) + 1);
  pre.textContent = content;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function openLog() {
  const source = $("#log-source").value || "proxy";
  if (state.logs.controller && state.logs.source === source) return;
  if (state.logs.controller) state.logs.controller.abort();
  state.logs.source = source;
  const controller = new AbortController();
  state.logs.controller = controller;
  $("#log").textContent = "";
  $("#log-state").textContent = "";
  try {
    const response = await api("logs/stream/" + modelPath(source), { signal: controller.signal });
    if (!response.ok) throw new Error(await response.text());
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      appendLog(decoder.decode(value, { stream: true }));
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    if (error.message !== "unauthorized") $("#log-state").textContent = "log stream ended: " + error.message;
  }
  if (state.logs.controller === controller) state.logs.controller = null;
}

// ---- events and header ------------------------------------------------------------------

function handleEvent(type, data) {
  if (type === "modelStatus") updateModels(data);
  else if (type === "inflight") updateInflight(data);
  else if (type === "activity") activityArrived(data);
}

async function followEvents() {
  for (;;) {
    const conn = $("#conn");
    try {
      const response = await api("api/events");
      if (!response.ok) throw new Error(response.statusText);
      conn.textContent = "live";
      conn.className = "conn live";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of frame.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const message = JSON.parse(line.slice(5));
            handleEvent(message.type, JSON.parse(message.data));
          }
        }
      }
    } catch (error) {
      if (error.message === "unauthorized") {
        conn.textContent = "needs key";
        conn.className = "conn down";
        return;
      }
    }
    conn.textContent = "reconnecting";
    conn.className = "conn down";
    await sleep(2000);
  }
}

async function refreshStatus() {
  try {
    const status = await apiJson("api/status");
    $("#version").textContent = "v" + status.version;
    $("#uptime").textContent = duration(status.uptime_seconds);
    $("#memory").textContent = bytes(status.memory_bytes);
  } catch (error) {
    // The connection indicator already says when swapd is unreachable.
  }
}

async function loadHistory() {
  // The newest row per model gives the TTL countdown a starting point.
  try {
    const page = await apiJson("api/metrics/activity?limit=200");
    for (const row of page.data) {
      const time = Date.parse(row.timestamp);
      if (time > (state.lastUse.get(row.model) || 0)) state.lastUse.set(row.model, time);
    }
  } catch (error) {
    // Without history the countdown shows the full TTL as an upper bound.
  }
}

function start() {
  $("#key").value = state.key;
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#key").value.trim();
    localStorage.setItem("swapd-api-key", state.key);
    showError("");
    location.reload();
  });
  $("#unload-all").addEventListener("click", () => api("api/models/unload", { method: "POST" }).catch(() => {}));
  $("#log-source").addEventListener("change", openLog);
  $("#log-pause").addEventListener("click", () => {
    const logs = state.logs;
    logs.paused = !logs.paused;
    $("#log-pause").setAttribute("aria-pressed", String(logs.paused));
    $("#log-pause").textContent = logs.paused ? "Resume" : "Pause";
    if (!logs.paused) {
      const held = logs.held;
      logs.held = "";
      $("#log-state").textContent = "";
      appendLog(held);
    } else {
      $("#log-state").textContent = "paused";
    }
  });
  $("#log-clear").addEventListener("click", () => { $("#log").textContent = ""; state.logs.held = ""; });
  $("#activity-model").addEventListener("change", (event) => {
    state.activity.model = event.target.value;
    state.activity.page = 1;
    loadActivity();
  });
  $("#activity-prev").addEventListener("click", () => { state.activity.page--; loadActivity(); });
  $("#activity-next").addEventListener("click", () => { state.activity.page++; loadActivity(); });
  for (const button of document.querySelectorAll("#activity th button")) {
    button.addEventListener("click", () => {
      const a = state.activity;
      if (a.sort === button.dataset.sort) a.order = a.order === "desc" ? "asc" : "desc";
      else { a.sort = button.dataset.sort; a.order = "desc"; }
      a.page = 1;
      loadActivity();
    });
  }
  window.addEventListener("hashchange", showView);
  showView();
  loadHistory();
  followEvents();
  refreshStatus();
  setInterval(refreshStatus, 5000);
  setInterval(tick, 1000);
}

// Once a second: the TTL countdowns and elapsed times, without redrawing the rows.
function tick() {
  const now = Date.now();
  for (const row of document.querySelectorAll("#models tbody tr")) {
    const model = state.models.find((m) => m.id === row.dataset.model);
    if (model) row.querySelector(".ttl").textContent = ttlLeft(model, now);
  }
  for (const row of document.querySelectorAll("#inflight tbody tr")) {
    const item = state.inflight.get(Number(row.dataset.id));
    if (item) row.cells[5].textContent = duration((item.entry.elapsed_ms + now - item.seenAt) / 1000);
  }
}

start();
