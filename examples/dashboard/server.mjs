#!/usr/bin/env node
// The dashboard's backend: serves the static page and the SDK's browser build, and mints
// WebSocket tickets with its API key (which never reaches the browser).
//
//   MITEOS_API_KEY=mt_test_sk_… node examples/dashboard/server.mjs [--demo]
//
// Settings (environment): MITEOS_API_KEY (required), MITEOS_STREAM_URL (default
// http://127.0.0.1:8080), PORT (default 3000; 0 picks a free one), HOST (127.0.0.1).
// --demo also publishes a made-up task or agent event every 2 s through the admin listener
// (MITEOS_ADMIN_URL, default http://127.0.0.1:8081; the token from MITEOS_ADMIN_TOKEN or
// ./data/admin_token, where `miteos-stream serve` writes it).
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { extname, join, normalize, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createTicket } from "../../sdk/js/dist/node.js";

const here = dirname(fileURLToPath(import.meta.url));
const sdkDist = join(here, "../../sdk/js/dist");
const apiKey = process.env.MITEOS_API_KEY;
const streamUrl = process.env.MITEOS_STREAM_URL ?? "http://127.0.0.1:8080";
if (!apiKey) {
  console.error("set MITEOS_API_KEY (the bootstrap key `miteos-stream serve` printed works)");
  process.exit(2);
}

const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png" };

/** A file under `root`, never outside it. */
async function serveFile(res, root, path) {
  const file = normalize(join(root, path));
  if (!file.startsWith(root)) return send(res, 404, "not found");
  try {
    const body = await readFile(file);
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(body);
  } catch {
    send(res, 404, "not found");
  }
}

function send(res, status, body, type = "text/plain; charset=utf-8") {
  res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
  res.end(typeof body === "string" ? body : JSON.stringify(body));
}

const server = createServer(async (req, res) => {
  const { pathname } = new URL(req.url ?? "/", "http://x");
  if (req.method === "POST" && pathname === "/api/ticket") {
    // Your own session check belongs here: only a signed-in user gets a ticket.
    try {
      const ticket = await createTicket({ apiKey, url: streamUrl, scopes: ["tasks.read", "agents.read"] });
      return send(res, 200, ticket, "application/json");
    } catch (error) {
      console.error(`ticket: ${error.message}`);
      return send(res, 502, { error: "could not mint a ticket" }, "application/json");
    }
  }
  if (req.method === "GET" && pathname === "/api/config") return send(res, 200, { streamUrl }, "application/json");
  if (req.method !== "GET") return send(res, 405, "method not allowed");
  if (pathname.startsWith("/sdk/")) return serveFile(res, sdkDist, pathname.slice(4));
  return serveFile(res, here, pathname === "/" ? "index.html" : pathname);
});

server.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? "127.0.0.1", () => {
  const { address, port } = server.address();
  console.log(`dashboard on http://${address}:${port}`);
});

if (process.argv.includes("--demo")) startDemo();

function startDemo() {
  const adminUrl = process.env.MITEOS_ADMIN_URL ?? "http://127.0.0.1:8081";
  let token = process.env.MITEOS_ADMIN_TOKEN;
  try {
    token ??= readFileSync("data/admin_token", "utf8").trim();
  } catch {
    console.error("--demo: set MITEOS_ADMIN_TOKEN or run from the directory holding data/admin_token");
    process.exit(2);
  }
  const samples = [
    ["tasks", "task.created", () => ({ task_id: `t_${n}`, title: "Sync invoices" })],
    ["tasks", "task.completed", () => ({ task_id: `t_${n - 1}`, duration_ms: 1200 + (n % 7) * 130 })],
    ["agents", "agent.started", () => ({ agent_id: `ag_${n % 4}`, model: "planner" })],
    ["tasks", "task.failed", () => ({ task_id: `t_${n}`, error: "timeout" })],
    ["agents", "agent.finished", () => ({ agent_id: `ag_${n % 4}`, steps: 3 + (n % 5) })],
  ];
  let n = 1;
  setInterval(async () => {
    const [channel, event, data] = samples[n % samples.length];
    n += 1;
    try {
      const res = await fetch(`${adminUrl}/internal/v1/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ account_id: "acct_local", environment: "test", channel, event, data: data() }),
      });
      if (!res.ok) console.error(`--demo: publish answered ${res.status}`);
    } catch (error) {
      console.error(`--demo: ${error.message}`);
    }
  }, 2000);
}
