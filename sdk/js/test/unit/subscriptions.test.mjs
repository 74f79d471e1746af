// subscribe/unsubscribe, event filters, per-topic handlers and ping, against a fake socket.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { MiteosStream, StreamError, eventMatches } from "../../dist/node.js";
import { FakeTransport } from "../support/fake_transport.mjs";

let fake;
beforeEach(() => {
  fake = new FakeTransport();
  mock.timers.enable({ apis: ["setTimeout"] });
});
afterEach(() => mock.timers.reset());

function connected(extra = {}) {
  const c = new MiteosStream({ url: "http://x", apiKey: "mt_test_sk_u", transport: fake.transport, random: () => 0, ...extra });
  c.connect();
  fake.last.open().authSuccess();
  return c;
}

test("subscribe with events sends the filter, resolves on subscribed, and filters locally at once", async () => {
  const c = connected();
  const seen = [];
  c.on("event", (e) => seen.push(e.event));
  const done = c.subscribe("tasks", { events: ["task.*"] });
  assert.deepEqual(fake.last.sent.at(-1), { type: "subscribe", channels: ["tasks"], events: ["task.*"] });
  // Sent before the server applied the filter: dropped by the client.
  fake.last.event("tasks", "other.thing").event("tasks", "task.completed");
  fake.last.push({ type: "subscribed", channels: ["tasks"] });
  await done;
  fake.last.event("agents", "agent.started");
  assert.deepEqual(seen, ["task.completed", "agent.started"]);
});

test("a refused subscribe rejects with the server's code and param and is not retried", async () => {
  const c = connected();
  const done = c.subscribe("billing");
  fake.last.push({ type: "error", code: "insufficient_scope", message: "this key lacks `billing.read`", param: "billing.read" });
  await assert.rejects(done, (e) => e instanceof StreamError && e.kind === "server" && e.code === "insufficient_scope" && e.param === "billing.read");
  fake.last.serverClose(1006);
  mock.timers.tick(0);
  fake.last.open().authSuccess();
  assert.deepEqual(fake.last.sentOf("subscribe"), [], "billing is not asked for again");
});

test("unsubscribe stops events at once and is re-applied on every reconnect", async () => {
  const c = connected();
  const seen = [];
  c.on("event", (e) => seen.push(e.channel));
  await c.unsubscribe("agents");
  assert.deepEqual(fake.last.sent.at(-1), { type: "unsubscribe", channels: ["agents"] });
  fake.last.event("agents", "agent.started").event("tasks", "task.created");
  fake.last.push({ type: "unsubscribed", channels: ["agents"] });
  assert.deepEqual(seen, ["tasks"]);
  assert.deepEqual(c.channels(), ["tasks"]);
  fake.last.serverClose(1001);
  mock.timers.tick(0);
  fake.last.open().authSuccess(); // the server auto-subscribes agents again
  assert.deepEqual(fake.last.sent.slice(1), [{ type: "unsubscribe", channels: ["agents"] }]);
  fake.last.event("agents", "agent.started");
  assert.deepEqual(seen, ["tasks"]);
});

test("filters survive a reconnect: one subscribe per distinct filter", async () => {
  const c = connected({ WebSocket: undefined });
  const a = c.subscribe("tasks", { events: ["task.*"] });
  const b = c.subscribe("agents", { events: ["task.*"] });
  fake.last.push({ type: "subscribed", channels: ["tasks"] }).push({ type: "subscribed", channels: ["agents"] });
  await Promise.all([a, b]);
  fake.last.serverClose(1006);
  mock.timers.tick(0);
  fake.last.open().authSuccess();
  assert.deepEqual(fake.last.sent.slice(1), [{ type: "subscribe", channels: ["tasks", "agents"], events: ["task.*"] }]);
});

test("a subscribe made while disconnected resolves when the next connection confirms it", async () => {
  const c = connected();
  fake.last.serverClose(1006);
  let resolved = false;
  const done = c.subscribe("tasks", { events: ["task.completed"] }).then(() => (resolved = true));
  mock.timers.tick(0);
  const s = fake.last.open().authSuccess();
  assert.deepEqual(s.sent.at(-1), { type: "subscribe", channels: ["tasks"], events: ["task.completed"] });
  await Promise.resolve();
  assert.equal(resolved, false);
  s.push({ type: "subscribed", channels: ["tasks"] });
  await done;
  assert.equal(resolved, true);
});

test("subscribe waiting when the stream closes for good is rejected", async () => {
  const c = connected();
  fake.last.serverClose(1006);
  const done = c.subscribe("tasks");
  c.close();
  await assert.rejects(done, (e) => e.kind === "connection");
});

test("per-topic handlers hear only their topic; the global one hears all", () => {
  const c = connected();
  const tasks = [];
  const all = [];
  const off = c.topic("tasks").on("event", (e) => tasks.push(e.event));
  c.on("event", (e) => all.push(e.event));
  fake.last.event("tasks", "t1").event("agents", "a1");
  off();
  fake.last.event("tasks", "t2");
  assert.deepEqual(tasks, ["t1"]);
  assert.deepEqual(all, ["t1", "a1", "t2"]);
  assert.throws(() => c.topic("nope"), TypeError);
  assert.throws(() => c.subscribe("tasks", { events: [] }), TypeError);
});

test("a topic the server takes away (scope_removed) is reported", () => {
  const c = connected();
  const removed = [];
  c.on("unsubscribed", (u) => removed.push(u));
  fake.last.push({ type: "unsubscribed", channels: ["agents"], reason: "scope_removed" });
  assert.deepEqual(removed, [{ topic: "agents", reason: "scope_removed" }]);
  assert.deepEqual(c.channels(), ["tasks"]);
});

test("ping resolves on pong, times out, and fails when not connected or on disconnect", async () => {
  const c = connected({ pingTimeoutMs: 1000 });
  const p = c.ping();
  assert.deepEqual(fake.last.sent.at(-1), { type: "ping" });
  fake.last.push({ type: "pong" });
  assert.ok((await p) >= 0);
  const lost = c.ping();
  fake.last.serverClose(1006);
  await assert.rejects(lost, (e) => e.kind === "connection");
  await assert.rejects(c.ping(), /not connected/);
  mock.timers.tick(0);
  fake.last.open().authSuccess();
  const slow = c.ping();
  mock.timers.tick(1000);
  await assert.rejects(slow, /no pong within 1000 ms/);
});

test("unknown or malformed server messages are ignored", () => {
  const c = connected();
  const seen = [];
  c.on("event", (e) => seen.push(e));
  fake.last.push("not json").push({ type: "future.thing" }).push({ type: "event", channel: "nope", event: "x" }).push("null");
  assert.deepEqual(seen, []);
  assert.equal(c.state, "connected");
});

test("event patterns match like the server's: exact names, or a trailing * over one segment or more", () => {
  assert.ok(eventMatches(["task.*"], "task.completed"));
  assert.ok(eventMatches(["task.*"], "task.step.done"));
  assert.ok(!eventMatches(["task.*"], "task."));
  assert.ok(!eventMatches(["task.*"], "task"));
  assert.ok(!eventMatches(["task.*"], "tasks.completed"));
  assert.ok(eventMatches(["*"], "anything"));
  assert.ok(eventMatches(["a.b", "c.*"], "a.b"));
  assert.ok(!eventMatches(["a.b"], "a.bc"));
});
