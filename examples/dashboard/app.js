// The dashboard page: one MiteosStream, tickets from this page's backend (POST /api/ticket),
// live task and agent events per topic, the connection state, and every reconnect.
import { MiteosStream } from "/sdk/index.js";

const $ = (selector, root = document) => root.querySelector(selector);
const MAX_ROWS = 50;

const config = await (await fetch("/api/config")).json();
$("#stream-url").textContent = config.streamUrl;

const stream = new MiteosStream({
  url: config.streamUrl,
  // A fresh single-use ticket before every attempt; the API key stays on the backend.
  getTicket: async () => {
    const res = await fetch("/api/ticket", { method: "POST" });
    if (!res.ok) throw new Error(`ticket backend answered ${res.status}`);
    return res.json();
  },
  // Positions survive a reload of this tab, so a reload resumes too (when the server keeps history).
  persist: "sessionStorage",
});

// --- connection state and log ---
let reconnects = 0;
function log(text, kind = "info") {
  const li = document.createElement("li");
  li.className = kind;
  li.innerHTML = `<time>${new Date().toLocaleTimeString()}</time> `;
  li.append(text);
  $("#log").prepend(li);
  while ($("#log").children.length > 30) $("#log").lastElementChild.remove();
}

stream.on("state", ({ state }) => {
  const pill = $("#state");
  pill.textContent = state;
  pill.dataset.state = state;
  document.body.dataset.state = state;
  log(`state: ${state}`, state);
});
stream.on("connected", (info) => {
  $("#env").textContent = info.environment;
  if (info.reconnect) $("#reconnects").textContent = String(++reconnects);
  log(`connected (${info.channels.join(", ")})`, "connected");
});
stream.on("disconnected", (d) => log(`disconnected: ${d.code} ${d.meaning}; retry in ${(d.reconnectInMs / 1000).toFixed(1)} s`, "warn"));
stream.on("closed", (c) => log(`closed: ${c.meaning}`, "error"));
stream.on("error", (e) => log(`error: ${e.message}`, "error"));
stream.on("resumed", (r) => log(`${r.topic}: ${r.recovered ? "resumed, nothing missed" : "could not resume: reload its state"}`, r.recovered ? "info" : "warn"));
stream.on("gap", (g) => log(`${g.topic}: gap before offset ${g.position.offset}: reload`, "warn"));

// --- events per topic ---
let count = 0;
for (const topic of ["tasks", "agents"]) {
  const section = $(`[data-topic="${topic}"]`);
  const list = $(".events", section);
  const handle = stream.topic(topic);
  const showPosition = () => {
    const p = handle.position;
    $("[data-position]", section).textContent = p ? `offset ${p.offset}` : "";
  };
  handle.on("event", (e) => {
    const li = document.createElement("li");
    li.dataset.id = e.id;
    li.dataset.event = e.event;
    if (e.offset !== undefined) li.dataset.offset = String(e.offset);
    const name = document.createElement("span");
    name.className = `name ${badge(e.event)}`;
    name.textContent = e.event;
    const data = document.createElement("code");
    data.textContent = JSON.stringify(e.data);
    const when = document.createElement("time");
    when.textContent = new Date(e.created_at).toLocaleTimeString();
    li.append(name, data, when);
    list.prepend(li);
    while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
    section.classList.add("has-events");
    $("#count").textContent = String(++count);
    showPosition();
  });
  handle.on("resumed", showPosition);
  handle.on("gap", showPosition);
}

function badge(event) {
  if (/(fail|error)/.test(event)) return "bad";
  if (/(complete|done|succeed|finish)/.test(event)) return "good";
  if (/(start|create|run)/.test(event)) return "new";
  return "";
}

stream.connect();
window.dashboardStream = stream; // for the browser test and for poking at in devtools
