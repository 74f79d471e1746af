// The SDK against the real miteos-stream binary (embedded mode, port 0, fresh data dir):
// auth with a key and with tickets, events, filters, reconnect, 4003, refusals.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { MiteosStream, createTicket, TOPICS } from "../../dist/node.js";
import { TestServer, until } from "../support/server.mjs";

let server;
const clients = [];
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  clients.forEach((c) => c.close());
  await server?.cleanup();
});

/** A client on the current server; a short backoff keeps the tests quick. */
function stream(options = {}) {
  const c = new MiteosStream({ url: server.url, apiKey: server.key, backoff: { initialMs: 50, maxMs: 200, throttleMs: 300 }, ...options });
  clients.push(c);
  return c;
}

/** Collects events of a client until one matches `last`. */
function collectUntil(c, last) {
  const seen = [];
  return {
    seen,
    done: new Promise((resolve) => {
      const off = c.on("event", (e) => {
        seen.push(e);
        if (last(e)) {
          off();
          resolve(seen);
        }
      });
    }),
  };
}

test("an API key connects, gets every topic, and receives published events", async () => {
  const c = stream();
  const connected = until(c, "connected", () => true);
  c.connect();
  const info = await connected;
  assert.equal(c.state, "connected");
  assert.equal(info.environment, "test");
  assert.deepEqual(info.channels, [...TOPICS].sort());
  assert.match(info.connectionId, /^conn_/);
  const perTopic = new Promise((resolve) => c.topic("tasks").on("event", resolve));
  const global = until(c, "event", (e) => e.event === "task.completed");
  await server.publish("tasks", "task.completed", { task_id: "t_1" });
  const [a, b] = await Promise.all([perTopic, global]);
  assert.equal(a, b);
  assert.equal(a.channel, "tasks");
  assert.deepEqual(a.data, { task_id: "t_1" });
  assert.match(a.id, /^evt_/);
  assert.ok((await c.ping()) >= 0, "ping answered");
  c.close();
});

test("a ticket (narrowed to tasks.read) connects with only that topic; each attempt mints a fresh one", async () => {
  const minted = [];
  const c = stream({
    apiKey: undefined,
    getTicket: async () => {
      const t = await createTicket({ apiKey: server.key, url: server.url, scopes: ["tasks.read"] });
      minted.push(t.ticket);
      return t;
    },
  });
  const connected = until(c, "connected", () => true);
  c.connect();
  assert.deepEqual((await connected).channels, ["tasks"]);
  assert.match(minted[0], /^mt_test_tk_/);
  await assert.rejects(c.subscribe("agents"), (e) => e.code === "insufficient_scope" && e.param === "agents.read");
  const got = collectUntil(c, (e) => e.event === "task.done");
  await server.publish("agents", "agent.started");
  await server.publish("tasks", "task.done");
  assert.deepEqual((await got.done).map((e) => e.event), ["task.done"]);
  c.close();
});

test("createTicket reports a refused mint with the server's code", async () => {
  const key = await server.createKey(["tasks.read"]);
  await assert.rejects(createTicket({ apiKey: key.key, url: server.url, scopes: ["agents.read"] }), (e) => e.status === 403 && e.code === "scope_escalation");
});

test("subscribe filters by event name, on the server; unsubscribe stops a topic", async () => {
  const c = stream();
  c.connect();
  await c.ready();
  await c.subscribe("tasks", { events: ["task.*"] });
  await c.unsubscribe("agents");
  const got = collectUntil(c, (e) => e.event === "task.sentinel");
  await server.publish("tasks", "other.thing");
  await server.publish("agents", "agent.started");
  await server.publish("tasks", "task.completed");
  await server.publish("tasks", "task.sentinel");
  assert.deepEqual((await got.done).map((e) => e.event), ["task.completed", "task.sentinel"]);
  assert.ok(!c.channels().includes("agents"));
  c.close();
});

test("the server filter really applies (a raw socket with the same subscribe sees the same)", async () => {
  // Guards the SDK's local filter from hiding a server that ignores `events`.
  const ws = new WebSocket(`${server.url.replace("http", "ws")}/v1/ws?token=${server.key}`);
  const frames = [];
  const next = (pred) => new Promise((resolve) => {
    const check = () => {
      const i = frames.findIndex(pred);
      if (i >= 0) resolve(frames.splice(0, i + 1).at(-1));
      else ws.once("message", check);
    };
    check();
  });
  ws.on("message", (d) => frames.push(JSON.parse(String(d))));
  await new Promise((r) => ws.once("open", r));
  ws.send(JSON.stringify({ type: "auth", token: server.key }));
  await next((m) => m.type === "auth.success");
  ws.send(JSON.stringify({ type: "subscribe", channels: ["tasks"], events: ["task.*"] }));
  await next((m) => m.type === "subscribed");
  await server.publish("tasks", "other.thing");
  await server.publish("tasks", "task.sentinel");
  const m = await next((x) => x.type === "event");
  assert.equal(m.event, "task.sentinel");
  ws.close();
});

test("a server restart (close 1001) shows reconnecting, then connected, and events flow again", async () => {
  const c = stream();
  const states = [];
  c.on("state", ({ state }) => states.push(state));
  c.connect();
  const minted = []; // tickets minted; attempts while the server is down fail to mint
  const t = stream({ apiKey: undefined, getTicket: async () => (minted.push((await createTicket({ apiKey: server.key, url: server.url })).ticket), minted.at(-1)) });
  t.connect();
  await Promise.all([c.ready(), t.ready()]);
  const ticketBack = until(t, "connected", (i) => i.reconnect);
  const before = until(c, "event", (e) => e.event === "before.restart");
  await server.publish("tasks", "before.restart");
  await before;
  const disconnected = until(c, "disconnected", () => true);
  const reconnected = until(c, "connected", (i) => i.reconnect);
  server = await server.restart();
  assert.equal((await disconnected).code, 1001);
  await Promise.all([reconnected, ticketBack]);
  assert.ok(minted.length >= 2, "the ticket client minted a fresh (single-use) ticket to reconnect");
  assert.equal(new Set(minted).size, minted.length);
  const afterEvent = until(c, "event", (e) => e.event === "after.restart");
  const afterTicket = until(t, "event", (e) => e.event === "after.restart");
  await server.publish("tasks", "after.restart");
  await Promise.all([afterEvent, afterTicket]);
  t.close();
  assert.deepEqual(states.slice(0, 2), ["connecting", "connected"]);
  assert.equal(states[2], "reconnecting");
  assert.equal(states.at(-1), "connected");
  assert.equal(c.stats.reconnects, 1);
  c.close();
});

test("revoking the key closes the stream with 4003 and the client stops; a new start is refused (401)", async () => {
  const key = await server.createKey(["tasks.read"], "revoke-me");
  let sockets = 0;
  class CountingWs extends WebSocket {
    constructor(url) {
      super(url);
      sockets += 1;
    }
  }
  const c = stream({ apiKey: key.key, WebSocket: CountingWs });
  c.connect();
  await c.ready();
  const closed = until(c, "closed", () => true);
  const revoked = await server.api("DELETE", `/v1/api-keys/${key.id}`);
  assert.equal(revoked.status, 200);
  const info = await closed;
  assert.equal(info.code, 4003);
  assert.equal(info.byClient, false);
  assert.equal(c.state, "closed");
  // No event to await for "nothing happens": wait well past the longest backoff (200 ms).
  await new Promise((r) => setTimeout(r, 600));
  assert.equal(sockets, 1, "no reconnect attempt");
  const again = until(c, "closed", () => true);
  c.connect();
  const refused = await again;
  assert.equal(refused.http?.status, 401);
  assert.equal(refused.http?.code, "revoked_api_key");
});

test("Node's own WebSocket (Node 22+, or 20 with --experimental-websocket) works as the transport", { skip: typeof globalThis.WebSocket !== "function" && "no global WebSocket in this Node" }, async () => {
  const c = stream({ WebSocket: globalThis.WebSocket });
  c.connect();
  await c.ready();
  const got = until(c, "event", (e) => e.event === "native.ws");
  await server.publish("agents", "native.ws", { ok: true });
  assert.deepEqual((await got).data, { ok: true });
  c.close();
});
