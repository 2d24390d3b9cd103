// Tern's dashboard: plain script, no libraries, no requests anywhere but this port.
// Each view polls the API while it is shown; the tap streams with fetch(), which
// (unlike EventSource) can send the Authorization header, so the secret never goes
// into a URL.
"use strict";

const $ = (id) => document.getElementById(id);
let auth = sessionStorage.getItem("tern-auth");
let view = "overview";
let timer = null;

// ---- the API ----

async function call(method, path, body) {
  const init = { method, headers: { "Authorization": "Basic " + auth, "X-Requested-With": "tern" } };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const r = await fetch("/api/v4/" + path, init);
  if (r.status === 401) { logout("Wrong app id or secret."); throw new Error("401"); }
  // Another client at this address (behind one NAT) failed to log in: wait, still logged in.
  if (r.status === 429) { if (!sessionStorage.getItem("tern-auth")) $("login_error").textContent = "Too many failed logins from this address: wait " + (r.headers.get("Retry-After") || "a few") + " s."; throw new Error("429"); }
  return r.json();
}
const get = (path) => call("GET", path);

// ---- wording ----

function duration(secs) {
  secs = Math.max(0, Math.round(secs));
  if (secs < 60) return secs + " s";
  if (secs < 3600) return Math.floor(secs / 60) + " min";
  if (secs < 86400) return Math.floor(secs / 3600) + " h " + Math.floor(secs % 3600 / 60) + " min";
  return Math.floor(secs / 86400) + " d " + Math.floor(secs % 86400 / 3600) + " h";
}
const ago = (ms) => ms === null || ms === undefined ? "–" : duration(ms / 1000) + " ago";
const protocol = (v) => ({ 3: "MQTT 3.1", 4: "MQTT 3.1.1", 5: "MQTT 5.0" })[v] || "MQTT " + v;
function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}
const count = (n) => n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
const plural = (n, word) => count(n) + " " + word + (n === 1 ? "" : "s");
function rate(n) { return n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en"); }
function expiry(secs) {
  if (secs === 0) return "ends with the connection";
  if (secs >= 4294967295) return "never";
  return duration(secs);
}

// A payload as the API sends it: text (JSON pretty-printed) or hex, 16 bytes a line.
function payloadText(v, full) {
  if (!v) return "";
  if (v.encoding === "hex") {
    if (!full) return "0x" + v.payload.slice(0, 48);
    const lines = [];
    for (let i = 0; i < v.payload.length; i += 32) {
      const hex = v.payload.slice(i, i + 32).match(/../g).join(" ");
      lines.push((i / 2).toString(16).padStart(4, "0") + "  " + hex);
    }
    return lines.join("\n");
  }
  if (full && !v.truncated) {
    try { const parsed = JSON.parse(v.payload); if (typeof parsed === "object" && parsed !== null) return JSON.stringify(parsed, null, 2); } catch (e) { /* not JSON */ }
  }
  return full ? v.payload : v.payload.slice(0, 80);
}

// ---- tables ----

// columns: [heading, value of a row, {num, sort}]
function table(id, columns, rows, sorting) {
  const t = $(id);
  t.replaceChildren();
  const head = t.createTHead().insertRow();
  for (const [label, , opts = {}] of columns) {
    const th = document.createElement("th");
    if (opts.num) th.className = "num";
    if (opts.sort && sorting) {
      const b = document.createElement("button");
      const on = sorting.sort === opts.sort;
      b.textContent = label + (on ? (sorting.desc ? " ▼" : " ▲") : "");
      b.onclick = () => sorting.by(opts.sort);
      th.setAttribute("aria-sort", on ? (sorting.desc ? "descending" : "ascending") : "none");
      th.appendChild(b);
    } else th.textContent = label;
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const [, value, opts = {}] of columns) {
      const td = tr.insertCell();
      if (opts.num) td.className = "num";
      const v = value(row);
      if (v instanceof Node) td.appendChild(v); else td.textContent = v === null || v === undefined ? "" : String(v);
    }
  }
}

function button(text, onclick, cls) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = text; b.onclick = onclick;
  if (cls) b.className = cls;
  return b;
}

function facts(id, pairs) {
  const dl = $(id);
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
}

// ---- charts: SVG polylines scaled to their data ----

function chart(svg, series, scaleId, unit) {
  const W = 600, H = 140, pad = 6;
  const all = series.flatMap((s) => s.points);
  svg.replaceChildren();
  svg.dataset.points = all.length;
  if (!all.length) return;
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const top = Math.max(1e-9, ...all.map((p) => p[1])) * 1.1;
  const x = (t) => t1 === t0 ? W / 2 : (t - t0) / (t1 - t0) * W;
  const y = (v) => H - pad - v / top * (H - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  for (const s of series) {
    if (!s.points.length) continue;
    // One point is a short dash: a circle would be stretched with the chart.
    const points = s.points.length > 1 ? s.points.map((p) => [x(p[0]), y(p[1])])
      : [[x(s.points[0][0]) - 8, y(s.points[0][1])], [x(s.points[0][0]) + 8, y(s.points[0][1])]];
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", s.color); line.setAttribute("stroke-width", 2);
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  }
  $(scaleId).textContent = "top " + unit(top / 1.1);
  $("chart_span").textContent = "last " + duration(t1 - t0);
}

async function overview() {
  const [nodes, history, alarms, stats] = await Promise.all([get("nodes"), get("history"), get("alarms"), get("stats")]);
  const node = nodes.data[0];
  const samples = history.data.samples;
  const last = samples[samples.length - 1];
  $("uptime").textContent = node.uptime;
  $("connections").textContent = count(last.connections);
  $("memory").textContent = bytes(last.memory);
  $("store").textContent = bytes(last.store_bytes);
  $("dropped").textContent = count(last.dropped);
  $("retained_count").textContent = count(stats.data[0]["retained.count"]);
  const rates = { in: [], out: [] };
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i], dt = Math.max(1, b.t - a.t);
    rates.in.push([b.t, (b.messages_in - a.messages_in) / dt]);
    rates.out.push([b.t, (b.messages_out - a.messages_out) / dt]);
  }
  const now = rates.in.length ? rates.in.length - 1 : -1;
  $("rate_in").textContent = now < 0 ? "–" : rate(rates.in[now][1]);
  $("rate_out").textContent = now < 0 ? "–" : rate(rates.out[now][1]);
  chart($("chart"), [{ points: rates.in, color: "var(--in)" }, { points: rates.out, color: "var(--out)" }], "chart_messages_scale", (v) => rate(v) + "/s");
  chart($("chart_connections"), [{ points: samples.map((s) => [s.t, s.connections]), color: "var(--in)" }], "chart_connections_scale", count);
  chart($("chart_memory"), [{ points: samples.map((s) => [s.t, s.memory]), color: "var(--out)" }], "chart_memory_scale", bytes);
  const list = alarms.data[0].alarms;
  $("no_alarms").hidden = list.length > 0;
  $("alarms").hidden = list.length === 0;
  table("alarms", [["Since (UTC)", (a) => a.activate_at], ["Alarm", (a) => a.name], ["What happened", (a) => a.message]], list);
}

// ---- topics: one level a request, expanded where the operator opened it ----

const expanded = new Set();
const seen = new Map(); // topic -> [time, messages] at the last refresh, for rates (shown rows only)
let selected = null;

async function topics() {
  const sys = $("show_sys").checked ? "&sys=true" : "";
  // The top is null: "" is the empty first level of topics like "/a".
  const levels = new Map();
  const wanted = [null].concat([...expanded]);
  const answers = await Promise.all(wanted.map((u) => get(u === null ? "topics?" + sys : "topics?under=" + encodeURIComponent(u) + sys)));
  wanted.forEach((u, i) => levels.set(u, answers[i].data));
  const root = levels.get(null);
  $("topic_totals").textContent = count(root.topics) + " topics, " + count(root.messages) + " messages since start";
  $("tree_empty").hidden = root.children.length > 0;
  const now = Date.now();
  const before = new Map(seen);
  seen.clear();
  const build = (under) => {
    const ul = document.createElement("ul");
    for (const c of levels.get(under).children) {
      const li = document.createElement("li");
      const row = document.createElement("div");
      row.className = "node" + (selected === c.topic ? " selected" : "");
      row.dataset.topic = c.topic;
      row.tabIndex = 0;
      const open = expanded.has(c.topic) && levels.has(c.topic);
      const toggle = button(c.has_children ? (open ? "▾" : "▸") : "", () => {
        if (expanded.has(c.topic)) expanded.delete(c.topic); else expanded.add(c.topic);
        topics().catch(() => {});
      }, "toggle");
      toggle.disabled = !c.has_children;
      toggle.setAttribute("aria-label", (open ? "collapse " : "expand ") + c.topic);
      const name = document.createElement("span"); name.className = "name"; name.textContent = c.name === "" ? "(empty)" : c.name;
      const last = before.get(c.topic);
      const perSec = last && now > last[0] ? (c.messages - last[1]) / ((now - last[0]) / 1000) : 0;
      seen.set(c.topic, [now, c.messages]);
      const stats = document.createElement("span"); stats.className = "stats";
      stats.textContent = plural(c.messages, "msg") + (c.topics > 1 ? " · " + plural(c.topics, "topic") : "") + (perSec > 0 ? " · " + rate(perSec) + "/s" : "");
      const value = document.createElement("span"); value.className = "value"; value.textContent = c.value ? payloadText(c.value, false) : "";
      row.append(toggle, name, stats, value);
      const choose = (e) => { if (e.target === toggle) return; selected = c.topic; detail(c); topics().catch(() => {}); };
      row.onclick = choose;
      row.onkeydown = (e) => { if (e.key === "Enter") choose(e); if (e.key === " " && c.has_children) { e.preventDefault(); toggle.click(); } };
      li.appendChild(row);
      if (open) li.appendChild(build(c.topic));
      if (selected === c.topic) detail(c);
      ul.appendChild(li);
    }
    return ul;
  };
  const tree = build(null);
  tree.id = "tree"; tree.setAttribute("aria-label", "topic tree");
  $("tree").replaceWith(tree);
}

function detail(c) {
  $("topic_detail").hidden = false;
  $("topic_name").textContent = c.topic;
  const v = c.value;
  const pairs = [["Messages since start", count(c.messages)]];
  if (c.topics > 1 || !v) pairs.push(["Topics below", count(c.topics)]);
  if (v) {
    pairs.push(["QoS", v.qos], ["Retained", v.retain ? "yes" : "no"], ["Last message", v.age_ms === null ? "retained before start" : ago(v.age_ms)],
      ["Size", bytes(v.size) + (v.truncated ? " (first 1 KiB shown)" : "")], ["Shown as", v.encoding === "hex" ? "hex (not UTF-8)" : "text"]);
  }
  facts("topic_facts", pairs);
  $("topic_value").textContent = v ? payloadText(v, true) : "(no message on this exact topic)";
  $("pub_topic").value = $("pub_topic").value || c.topic;
}

// ---- the tap: a filter's messages, live ----

let tap = null;

async function watch() {
  if (tap) { tap.abort(); return; }
  const filter = $("tap_filter").value.trim();
  if (!filter) return;
  tap = new AbortController();
  $("tap_start").textContent = "Stop";
  $("tap_status").textContent = "Watching " + filter;
  $("tap_log").replaceChildren();
  let ended = "stopped";
  try {
    const r = await fetch("/api/v4/topics/tap?filter=" + encodeURIComponent(filter), {
      headers: { "Authorization": "Basic " + auth, "X-Requested-With": "tern" }, signal: tap.signal });
    if (r.status !== 200) { ended = (await r.json()).message; return; }
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += decoder.decode(value, { stream: true });
      const lines = rest.split("\n");
      rest = lines.pop();
      for (const line of lines) {
        if (!line) continue;
        const m = JSON.parse(line);
        if (m.end) { ended = "ended: " + m.end; continue; }
        if (m.watching !== undefined) continue;
        const li = document.createElement("li");
        li.textContent = new Date(m.time).toLocaleTimeString() + "  " + m.topic + "  q" + m.qos + (m.retain ? " r" : "") + "  " + payloadText(m, false);
        $("tap_log").prepend(li);
        while ($("tap_log").children.length > 200) $("tap_log").lastChild.remove();
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") ended = "ended: " + e.message;
  } finally {
    tap = null;
    $("tap_start").textContent = "Watch";
    $("tap_status").textContent = "Not watching (" + ended + ").";
  }
}

async function publish() {
  const body = { topic: $("pub_topic").value, payload: $("pub_payload").value, qos: Number($("pub_qos").value), retain: $("pub_retain").checked, clientid: "tern-dashboard" };
  const r = await call("POST", "mqtt/publish", body);
  $("pub_result").textContent = r.code === 0 ? "Published to " + body.topic + " at " + new Date().toLocaleTimeString() + "." : "Refused: " + r.message;
  $("pub_result").className = r.code === 0 ? "ok" : "error";
}

// ---- clients ----

const clientList = { page: 1, limit: 50, sort: "connected_at", desc: false, like: "" };
clientList.by = (field) => {
  clientList.desc = clientList.sort === field ? !clientList.desc : false;
  clientList.sort = field; clientList.page = 1; clients().catch(() => {});
};

function kick(id) {
  return call("DELETE", "clients/" + encodeURIComponent(id));
}

async function clients() {
  const q = `clients?_page=${clientList.page}&_limit=${clientList.limit}&_sort=${clientList.sort}&_order=${clientList.desc ? "desc" : "asc"}` +
    (clientList.like ? "&_like=" + encodeURIComponent(clientList.like) : "");
  const r = await get(q);
  const pages = Math.max(1, Math.ceil(r.meta.count / clientList.limit));
  if (clientList.page > pages) { clientList.page = pages; return clients(); }
  $("client_count").textContent = count(r.meta.count) + (clientList.like ? " found" : " connected");
  $("page_info").textContent = "page " + clientList.page + " of " + pages;
  $("page_prev").disabled = clientList.page <= 1;
  $("page_next").disabled = !r.meta.hasnext;
  const link = (c) => { const a = document.createElement("a"); a.href = "#client/" + encodeURIComponent(c.clientid); a.textContent = c.clientid; return a; };
  table("clients", [
    ["Client ID", link, { sort: "clientid" }], ["User", (c) => c.username, { sort: "username" }],
    ["Address", (c) => c.ip_address + ":" + c.port, { sort: "ip_address" }], ["Protocol", (c) => protocol(c.proto_ver)],
    ["Connected for", (c) => duration(c.connected_seconds), { sort: "connected_at" }],
    ["Keep-alive", (c) => c.keepalive ? c.keepalive + " s" : "none", { sort: "keepalive" }],
    ["Queued", (c) => count(c.mqueue_len), { num: true, sort: "mqueue_len" }], ["In flight", (c) => count(c.inflight), { num: true, sort: "inflight" }],
    ["Received", (c) => count(c.recv_msg), { num: true, sort: "recv_msg" }], ["Sent", (c) => count(c.send_msg), { num: true, sort: "send_msg" }],
    ["", (c) => { const b = button("Kick", async () => { await kick(c.clientid); clients().catch(() => {}); }, "danger"); b.dataset.kick = c.clientid; b.setAttribute("aria-label", "kick " + c.clientid); return b; }],
  ], r.data, clientList);
}

let shownClient = null;

async function client() {
  const id = shownClient;
  $("client_title").textContent = id;
  const r = await fetch("/api/v4/clients/" + encodeURIComponent(id), { headers: { "Authorization": "Basic " + auth, "X-Requested-With": "tern" } });
  if (r.status === 401) { logout("Wrong app id or secret."); return; }
  const body = await r.json();
  $("client_gone").hidden = r.status === 200;
  $("client_kick").hidden = r.status !== 200;
  if (r.status !== 200) { $("client_gone").textContent = body.message; facts("client_facts", []); table("client_subscriptions", [], []); return; }
  const c = body.data[0];
  facts("client_facts", [
    ["User", c.username || "–"], ["Address", c.ip_address + ":" + c.port], ["Listener", c.zone], ["Protocol", protocol(c.proto_ver)],
    ["Connected", c.connected_at + " UTC (" + duration(c.connected_seconds) + ")"], ["Keep-alive", c.keepalive ? c.keepalive + " s" : "none"],
    ["Clean start", c.clean_start ? "yes" : "no"], ["Session expiry", expiry(c.expiry_interval)],
    ["Queued", count(c.mqueue_len) + (c.mqueue_dropped ? " (" + count(c.mqueue_dropped) + " dropped)" : "")], ["In flight", count(c.inflight)],
    ["Received / sent", count(c.recv_msg) + " / " + count(c.send_msg)],
    ["Will", c.will ? c.will.topic + " (QoS " + c.will.qos + (c.will.retain ? ", retained" : "") + (c.will.delay_interval ? ", after " + duration(c.will.delay_interval) : "") + ")" : "none"],
  ]);
  table("client_subscriptions", [["Filter", (s) => s.topic], ["QoS", (s) => s.qos]], c.subscriptions);
}

// ---- bridges, listeners, cluster ----

async function bridges() {
  const list = (await get("bridges")).data;
  $("no_bridges").hidden = list.length > 0;
  table("bridges", [
    ["Bridge", (b) => b.name], ["State", (b) => b.connected ? "Connected" : "Down"], ["Remote", (b) => b.remote || "–"],
    ["Backlog on disk", (b) => count(b.queued) + " messages, " + bytes(b.queued_bytes)],
    ["Forwarded", (b) => count(b.sent), { num: true }], ["Acknowledged", (b) => count(b.acknowledged), { num: true }],
    ["Received", (b) => count(b.received), { num: true }], ["Dropped", (b) => count(b.dropped), { num: true }],
    ["Last forward", (b) => b.last_forward_ms ? ago(Date.now() - b.last_forward_ms) : "never"], ["Last error", (b) => b.last_error || "–"],
  ], list);
}

async function listeners() {
  const list = (await get("listeners")).data[0].listeners;
  table("listeners", [
    ["Listener", (l) => l.identifier], ["Address", (l) => l.listen_on], ["Protocol", (l) => l.protocol],
    ["TLS here", (l) => l.tls ? "yes" : "no"], ["PROXY header", (l) => l.proxy_protocol ? "yes" : "no"],
    ["Connections", (l) => count(l.current_conns) + (l.max_conns ? " of " + count(l.max_conns) : ""), { num: true }],
  ], list);
}

async function cluster() {
  const [info, nodes] = await Promise.all([get("cluster"), get("nodes")]);
  const c = info.data;
  $("cluster_note").textContent = c.enabled ? `This node sees ${c.nodes_seen} of the ${c.nodes_known} nodes it knows.` : "Not in a cluster.";
  table("cluster", [
    ["Node", (n) => n.node], ["State", (n) => n.node_status], ["Address", (n) => n.cluster_address], ["Clients", (n) => count(n.connections), { num: true }],
    ["Waiting for it", (n) => n.queued === undefined ? "" : count(n.queued) + " (" + bytes(n.queued_bytes) + ")"],
    ["Last sync", (n) => n.last_sync], ["Linked since", (n) => n.link_since], ["Last error", (n) => n.last_error],
  ], nodes.data);
}

// ---- views and polling ----

const views = { overview: [overview, 5000], topics: [topics, 1000], clients: [clients, 3000], client: [client, 3000],
  bridges: [bridges, 3000], listeners: [listeners, 5000], cluster: [cluster, 3000] };

async function header() {
  const node = (await get("nodes")).data[0];
  $("node").textContent = node.node + " · tern " + node.version;
}

function show() {
  let hash = "";
  try { hash = decodeURIComponent(location.hash.slice(1)); } catch (e) { /* a malformed link: the overview */ }
  if (hash.startsWith("client/")) { view = "client"; shownClient = hash.slice(7); } else view = views[hash] ? hash : "overview";
  for (const s of document.querySelectorAll("[data-page]")) s.hidden = s.dataset.page !== view;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.tab === view || (view === "client" && a.dataset.tab === "clients")) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  clearTimeout(timer);
  const [refresh, every] = views[view];
  const tick = () => refresh().catch(() => {}).finally(() => { if (auth) timer = setTimeout(tick, every); });
  if (auth) tick();
}

function logout(why) {
  auth = null; sessionStorage.removeItem("tern-auth"); clearTimeout(timer);
  if (tap) tap.abort();
  $("app").hidden = true; $("nav").hidden = true; $("login").hidden = false;
  $("login_error").textContent = why || "";
}

async function login(e) {
  e.preventDefault();
  try { auth = btoa($("app_id").value + ":" + $("app_secret").value); } catch (err) { $("login_error").textContent = "The app id and secret must be Latin-1 text."; return; }
  try { await get("brokers"); } catch (err) { return; }
  sessionStorage.setItem("tern-auth", auth);
  start();
}

function start() {
  $("login").hidden = true; $("app").hidden = false; $("nav").hidden = false;
  header().catch(() => {});
  show();
}

$("login").addEventListener("submit", login);
$("tap_form").addEventListener("submit", (e) => { e.preventDefault(); watch(); });
$("pub_form").addEventListener("submit", (e) => { e.preventDefault(); publish().catch((err) => { $("pub_result").textContent = err.message; }); });
$("show_sys").addEventListener("change", () => topics().catch(() => {}));
let searchTimer = null;
$("client_search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { clientList.like = $("client_search").value.trim(); clientList.page = 1; clients().catch(() => {}); }, 250);
});
$("page_prev").onclick = () => { clientList.page = Math.max(1, clientList.page - 1); clients().catch(() => {}); };
$("page_next").onclick = () => { clientList.page += 1; clients().catch(() => {}); };
$("client_kick").onclick = async () => { await kick(shownClient); client().catch(() => {}); };
window.addEventListener("hashchange", show);
if (auth) start();
