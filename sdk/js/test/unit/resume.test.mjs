// Continuity (SPEC §7) against a fake socket: positions, resume on reconnect, recovered
// true/false, gaps, duplicates, and persistence across a page reload.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { MiteosStream } from "../../dist/node.js";
import { FakeTransport, MemoryStorage } from "../support/fake_transport.mjs";

const E1 = "ep_1";
let fake;
beforeEach(() => {
  fake = new FakeTransport();
  mock.timers.enable({ apis: ["setTimeout"] });
});
afterEach(() => mock.timers.reset());

function client(extra = {}) {
  return new MiteosStream({ url: "http://x", apiKey: "mt_test_sk_u", transport: fake.transport, random: () => 0, ...extra });
}

/** Drops the connection and lets the client open the next socket (random 0: no delay). */
function reconnect() {
  fake.last.serverClose(1006);
  mock.timers.tick(0);
  return fake.last.open();
}

function collect(c, name) {
  const out = [];
  c.on(name, (x) => out.push(x));
  return out;
}

test("positions come from auth.success and advance with each event's offset", () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 10, epoch: E1 }, agents: { offset: 3, epoch: E1 } } });
  assert.deepEqual(c.topic("tasks").position, { offset: 10, epoch: E1 });
  fake.last.event("tasks", "task.created", 11).event("tasks", "task.completed", 12);
  assert.deepEqual(c.topic("tasks").position, { offset: 12, epoch: E1 });
  assert.deepEqual(c.topic("agents").position, { offset: 3, epoch: E1 });
});

test("a reconnect resumes every topic from its last position, and recovered:true keeps it", () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 10, epoch: E1 }, agents: { offset: 3, epoch: E1 } } });
  fake.last.event("tasks", "task.created", 11);
  const resumed = collect(c, "resumed");
  const events = collect(c, "event");
  const s = reconnect();
  assert.deepEqual(s.sent[0], { type: "auth", token: "mt_test_sk_u", resume: { tasks: { offset: 11, epoch: E1 }, agents: { offset: 3, epoch: E1 } } });
  // The server recovered: its position is the channel's head; missed events 12..14 follow.
  s.authSuccess({ positions: { tasks: { offset: 14, epoch: E1, recovered: true }, agents: { offset: 3, epoch: E1, recovered: true } } });
  assert.deepEqual(resumed, [
    { topic: "agents", recovered: true, position: { offset: 3, epoch: E1 } },
    { topic: "tasks", recovered: true, position: { offset: 11, epoch: E1 } },
  ]);
  assert.deepEqual(c.topic("tasks").position, { offset: 11, epoch: E1 }, "not jumped to 14 before 12..14 arrived");
  s.event("tasks", "a", 12).event("tasks", "b", 13);
  // The connection drops in the middle of the replay: the next resume starts after 13.
  const s2 = reconnect();
  assert.deepEqual(s2.sent[0].resume.tasks, { offset: 13, epoch: E1 });
  assert.deepEqual(events.map((e) => e.offset), [12, 13]);
});

test("recovered:false (epoch changed or history too short) moves to the reply's position and tells the app", () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 10, epoch: E1 } } });
  const resumed = collect(c, "resumed");
  const perTopic = [];
  c.topic("tasks").on("resumed", (r) => perTopic.push(r));
  const s = reconnect();
  s.authSuccess({ channels: ["tasks"], positions: { tasks: { offset: 2, epoch: "ep_2", recovered: false } } });
  assert.deepEqual(resumed, [{ topic: "tasks", recovered: false, position: { offset: 2, epoch: "ep_2" } }]);
  assert.deepEqual(perTopic, resumed);
  s.event("tasks", "x", 3);
  assert.deepEqual(c.topic("tasks").position, { offset: 3, epoch: "ep_2" });
});

test("a reconnect to a server without positions reports recovered:false for every topic", () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess();
  fake.last.event("tasks", "no.offset"); // no offset: not tracked
  const resumed = collect(c, "resumed");
  const connected = collect(c, "connected");
  const s = reconnect();
  assert.equal(s.sent[0].resume, undefined, "nothing to resume from");
  s.authSuccess();
  assert.deepEqual(resumed, [{ topic: "agents", recovered: false }, { topic: "tasks", recovered: false }]);
  assert.deepEqual(connected[0].recovered, {});
});

test("a duplicate offset is dropped and counted; a skipped offset is a client-detected gap", () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 5, epoch: E1 } } });
  const events = collect(c, "event");
  const gaps = collect(c, "gap");
  fake.last.event("tasks", "a", 6).event("tasks", "dup", 6).event("tasks", "old", 4).event("tasks", "b", 9);
  assert.deepEqual(events.map((e) => e.offset), [6, 9]);
  assert.equal(c.stats.duplicates, 2);
  assert.deepEqual(gaps, [{ topic: "tasks", position: { offset: 6, epoch: E1 }, source: "client" }]);
});

test("a server gap message is reported and sets the position", () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 5, epoch: E1 } } });
  const gaps = collect(c, "gap");
  const topicGaps = [];
  c.topic("tasks").on("gap", (g) => topicGaps.push(g));
  fake.last.push({ type: "gap", channel: "tasks", position: { offset: 40, epoch: E1 } });
  assert.deepEqual(gaps, [{ topic: "tasks", position: { offset: 40, epoch: E1 }, source: "server" }]);
  assert.deepEqual(topicGaps, gaps);
  assert.deepEqual(c.topic("tasks").position, { offset: 40, epoch: E1 });
});

test("with an event filter, skipped offsets are filtered events, not gaps", async () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 5, epoch: E1 } } });
  const done = c.subscribe("tasks", { events: ["task.completed"] });
  fake.last.push({ type: "subscribed", channels: ["tasks"], positions: { tasks: { offset: 7, epoch: E1 } } });
  await done;
  const gaps = collect(c, "gap");
  fake.last.event("tasks", "task.completed", 6).event("tasks", "task.completed", 9);
  assert.deepEqual(gaps, []);
  assert.deepEqual(c.topic("tasks").position, { offset: 9, epoch: E1 }, "an already-subscribed topic keeps its own position");
});

test("an unsubscribed topic is not resumed", async () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 5, epoch: E1 }, agents: { offset: 1, epoch: E1 } } });
  await c.unsubscribe("agents");
  const s = reconnect();
  assert.deepEqual(s.sent[0].resume, { tasks: { offset: 5, epoch: E1 } });
});

test("persist: positions survive a reload and the first connection resumes with them", () => {
  const storage = new MemoryStorage();
  const first = client({ persist: storage, persistKey: "dash" });
  first.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 5, epoch: E1 } } });
  fake.last.event("tasks", "a", 6);
  assert.deepEqual(JSON.parse(storage.getItem("dash")), { tasks: { offset: 6, epoch: E1 } });
  first.close();

  const reloaded = client({ persist: storage, persistKey: "dash" });
  const resumed = collect(reloaded, "resumed");
  reloaded.connect();
  const s = fake.last.open();
  assert.deepEqual(s.sent[0].resume, { tasks: { offset: 6, epoch: E1 } });
  s.authSuccess({ positions: { tasks: { offset: 8, epoch: E1, recovered: true }, agents: { offset: 0, epoch: E1 } } });
  assert.deepEqual(resumed, [{ topic: "tasks", recovered: true, position: { offset: 6, epoch: E1 } }], "only the resumed topic is reported on a first connection");
});

test("persist: a corrupt or unusable storage is ignored, never fatal", () => {
  const corrupt = new MemoryStorage();
  corrupt.setItem("miteos-stream:positions", "{not json");
  const c = client({ persist: corrupt });
  c.connect();
  assert.equal(fake.last.open().sent[0].resume, undefined);
  const broken = { getItem() { throw new Error("denied"); }, setItem() { throw new Error("quota"); }, removeItem() {} };
  const d = client({ persist: broken });
  d.connect();
  fake.last.open().authSuccess({ positions: { tasks: { offset: 1, epoch: E1 } } }).event("tasks", "a", 2);
  assert.deepEqual(d.topic("tasks").position, { offset: 2, epoch: E1 });
});
