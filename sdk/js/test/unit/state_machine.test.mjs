// The connection state machine, reconnects and close-code handling, against a fake socket.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { MiteosStream, CLOSE_CODES } from "../../dist/node.js";
import { FakeTransport, nextEmit, flush } from "../support/fake_transport.mjs";

const KEY = "mt_test_sk_unit";
let fake;

beforeEach(() => {
  fake = new FakeTransport();
  mock.timers.enable({ apis: ["setTimeout"] });
});
afterEach(() => mock.timers.reset());

function client(extra = {}) {
  return new MiteosStream({ url: "http://127.0.0.1:1", apiKey: KEY, transport: fake.transport, random: () => 0.5, ...extra });
}

function states(c) {
  const seen = [];
  c.on("state", ({ state }) => seen.push(state));
  return seen;
}

test("connect opens /v1/ws with the key, sends auth first, and is connected on auth.success", () => {
  const c = client();
  const seen = states(c);
  assert.equal(c.state, "closed");
  c.connect();
  assert.equal(c.state, "connecting");
  const s = fake.last;
  assert.equal(s.url.pathname, "/v1/ws");
  assert.equal(s.url.protocol, "ws:");
  assert.equal(s.url.searchParams.get("token"), KEY);
  assert.deepEqual(s.sent, []);
  s.open();
  assert.deepEqual(s.sent, [{ type: "auth", token: KEY }]);
  let connected;
  c.on("connected", (info) => (connected = info));
  s.authSuccess();
  assert.equal(c.state, "connected");
  assert.deepEqual(connected, { connectionId: "conn_1", keyId: "key_1", environment: "test", channels: ["agents", "tasks"], reconnect: false, recovered: {} });
  assert.deepEqual(seen, ["connecting", "connected"]);
});

test("a lost connection reconnects after a jittered delay, then reports a reconnect", () => {
  const c = client();
  const seen = states(c);
  c.connect();
  fake.last.open().authSuccess();
  let disconnected;
  c.on("disconnected", (d) => (disconnected = d));
  fake.last.serverClose(1006);
  assert.equal(c.state, "reconnecting");
  assert.equal(disconnected.code, 1006);
  assert.equal(disconnected.reconnectInMs, 250); // random 0.5 × initial 500 ms
  assert.equal(fake.sockets.length, 1);
  mock.timers.tick(249);
  assert.equal(fake.sockets.length, 1, "no attempt before the delay");
  mock.timers.tick(1);
  assert.equal(fake.sockets.length, 2);
  let info;
  c.on("connected", (i) => (info = i));
  fake.last.open().authSuccess();
  assert.equal(info.reconnect, true);
  assert.equal(c.stats.reconnects, 1);
  assert.deepEqual(seen, ["connecting", "connected", "reconnecting", "connected"]);
});

test("failed attempts back off exponentially up to the cap; success resets the backoff", () => {
  const c = client({ backoff: { initialMs: 100, maxMs: 1000 }, random: () => 0.999 });
  c.connect();
  const delays = [];
  c.on("disconnected", (d) => delays.push(d.reconnectInMs));
  for (let i = 0; i < 6; i++) {
    fake.last.serverClose(1006);
    mock.timers.tick(delays[delays.length - 1]);
  }
  assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);
  fake.last.open().authSuccess();
  fake.last.serverClose(1001);
  assert.equal(delays[delays.length - 1], 99, "reset after a successful auth");
});

for (const code of [4003, 4001]) {
  test(`close ${code} stops and reports, with no further attempt`, () => {
    const c = client();
    c.connect();
    fake.last.open().authSuccess();
    let closed;
    c.on("closed", (i) => (closed = i));
    fake.last.serverClose(code, "bye");
    assert.equal(c.state, "closed");
    assert.equal(closed.code, code);
    assert.equal(closed.byClient, false);
    assert.equal(closed.meaning, CLOSE_CODES[code].meaning);
    mock.timers.tick(120_000);
    assert.equal(fake.sockets.length, 1);
  });
}

for (const code of [4009, 4004, 1001, 1006, 4002, 1011]) {
  test(`close ${code} reconnects with the normal backoff`, () => {
    const c = client();
    c.connect();
    fake.last.open().authSuccess();
    let d;
    c.on("disconnected", (x) => (d = x));
    fake.last.serverClose(code);
    assert.equal(c.state, "reconnecting");
    assert.ok(d.reconnectInMs < 500, `${d.reconnectInMs}`);
    mock.timers.tick(d.reconnectInMs);
    assert.equal(fake.sockets.length, 2);
  });
}

test("4029 and 1013 back off at least throttleMs", () => {
  for (const code of [4029, 1013]) {
    fake = new FakeTransport();
    const c = client({ backoff: { throttleMs: 8000 } });
    c.connect();
    fake.last.open().authSuccess();
    let d;
    c.on("disconnected", (x) => (d = x));
    fake.last.serverClose(code);
    assert.equal(d.reconnectInMs, 8000 + 250, `code ${code}`);
    mock.timers.tick(8000);
    assert.equal(fake.sockets.length, 1);
    mock.timers.tick(250);
    assert.equal(fake.sockets.length, 2);
    c.close();
  }
});

test("HTTP 429 on the upgrade backs off longer, and a longer Retry-After wins", () => {
  const c = client();
  c.connect();
  const delays = [];
  c.on("disconnected", (d) => delays.push(d));
  fake.last.serverClose(1006, "", { status: 429, code: "rate_limited", retryAfterMs: 12_000 });
  assert.equal(delays[0].reconnectInMs, 12_000 + 250);
  assert.equal(delays[0].http.status, 429);
  mock.timers.tick(12_250);
  fake.last.serverClose(1006, "", { status: 429, retryAfterMs: 1000 });
  assert.equal(delays[1].reconnectInMs, 5000 + 500, "throttle floor 5 s, jitter on attempt 2");
});

test("4008 reports a client bug and reconnects after a longer wait", () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess();
  const errors = [];
  c.on("error", (e) => errors.push(e));
  fake.last.serverClose(4008);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].kind, "client_bug");
  assert.equal(errors[0].code, "4008");
  assert.equal(c.state, "reconnecting");
});

test("a refused upgrade with a key: 401 and 403 stop; 503 retries", () => {
  for (const [status, expect] of [[401, "closed"], [403, "closed"], [503, "reconnecting"]]) {
    fake = new FakeTransport();
    const c = client();
    c.connect();
    fake.last.serverClose(1006, "", { status, code: "x" });
    assert.equal(c.state, expect, `HTTP ${status}`);
    c.close();
  }
});

test("tickets: a fresh one per attempt, in the URL and the auth message; a refused ticket retries", async () => {
  let n = 0;
  const c = new MiteosStream({ url: "https://stream.example", getTicket: async () => ({ ticket: `mt_test_tk_${++n}` }), transport: fake.transport, random: () => 0.5 });
  c.connect();
  const s1 = await fake.next(0);
  assert.equal(s1.url.protocol, "wss:");
  assert.equal(s1.url.searchParams.get("ticket"), "mt_test_tk_1");
  assert.equal(s1.url.searchParams.get("token"), null);
  s1.open();
  assert.deepEqual(s1.sent, [{ type: "auth", ticket: "mt_test_tk_1" }]);
  s1.serverClose(1006, "", { status: 401, code: "invalid_api_key" });
  assert.equal(c.state, "reconnecting", "a 401 on a ticket is worth a fresh ticket");
  mock.timers.tick(250);
  const s2 = await fake.next(1);
  s2.open();
  assert.deepEqual(s2.sent, [{ type: "auth", ticket: "mt_test_tk_2" }]);
});

test("getTicket failing reports an error and retries with backoff", async () => {
  let calls = 0;
  const c = new MiteosStream({ url: "http://x", getTicket: async () => { calls++; throw new Error("backend down"); }, transport: fake.transport, random: () => 0.5 });
  const error = nextEmit(c, "error");
  c.connect();
  const e = await error;
  assert.equal(e.kind, "ticket");
  assert.match(e.message, /backend down/);
  assert.equal(c.state, "reconnecting");
  assert.equal(calls, 1);
  mock.timers.tick(250);
  await flush();
  assert.equal(calls, 2);
  assert.equal(fake.sockets.length, 0);
  c.close();
});

test("a socket that never authenticates is given up after connectTimeoutMs", () => {
  const c = client({ connectTimeoutMs: 3000 });
  c.connect();
  fake.last.open(); // the server never answers auth
  let d;
  c.on("disconnected", (x) => (d = x));
  mock.timers.tick(3000);
  assert.ok(fake.sockets[0].closedByClient, "the stuck socket is closed");
  assert.equal(d.reason, "connect timeout");
  mock.timers.tick(d.reconnectInMs);
  assert.equal(fake.sockets.length, 2);
  fake.sockets[0].serverClose(1006); // late callback of the old socket: ignored
  assert.equal(c.state, "reconnecting");
  assert.equal(fake.sockets.length, 2);
});

test("close() is final: the socket is closed with 1000, timers stop, and listeners hear it once", () => {
  const c = client();
  c.connect();
  fake.last.open().authSuccess();
  const closed = [];
  c.on("closed", (i) => closed.push(i));
  c.close();
  c.close();
  assert.deepEqual(fake.last.closedByClient, { code: 1000, reason: "client closed" });
  assert.equal(closed.length, 1);
  assert.equal(closed[0].byClient, true);
  fake.last.serverClose(1006); // the real close arriving later changes nothing
  mock.timers.tick(60_000);
  assert.equal(c.state, "closed");
  assert.equal(fake.sockets.length, 1);
});

test("close() while waiting to reconnect cancels the attempt", () => {
  const c = client();
  c.connect();
  fake.last.serverClose(1006);
  c.close();
  mock.timers.tick(60_000);
  assert.equal(fake.sockets.length, 1);
});

test("a listener that throws does not break the client; its error surfaces as uncaught", async () => {
  mock.timers.reset(); // the rethrow uses a real timer
  const listeners = process.listeners("uncaughtException");
  process.removeAllListeners("uncaughtException");
  const errors = [];
  // One throw per state change: connecting, connected, closed.
  const uncaught = new Promise((resolve) =>
    process.on("uncaughtException", (e) => errors.push(e) === 3 && resolve(errors)),
  );
  try {
    const c = client();
    c.on("state", () => {
      throw new Error("app bug");
    });
    let connected = false;
    c.on("connected", () => (connected = true));
    c.connect();
    fake.last.open().authSuccess();
    assert.equal(c.state, "connected");
    assert.ok(connected, "the listeners after the throwing one still ran");
    c.close();
    const seen = await uncaught;
    assert.deepEqual(seen.map((e) => e.message), ["app bug", "app bug", "app bug"]);
  } finally {
    process.removeAllListeners("uncaughtException");
    listeners.forEach((l) => process.on("uncaughtException", l));
  }
});

test("credentials: MITEOS_API_KEY by default; none, or both, is an error", () => {
  const saved = process.env.MITEOS_API_KEY;
  try {
    process.env.MITEOS_API_KEY = "mt_test_sk_fromenv";
    const c = new MiteosStream({ url: "http://x", transport: fake.transport });
    c.connect();
    assert.equal(fake.last.url.searchParams.get("token"), "mt_test_sk_fromenv");
    c.close();
    delete process.env.MITEOS_API_KEY;
    assert.throws(() => new MiteosStream({ url: "http://x", transport: fake.transport }), /no credential/);
    assert.throws(() => new MiteosStream({ url: "http://x", apiKey: KEY, getTicket: () => "t" }), /not both/);
  } finally {
    if (saved === undefined) delete process.env.MITEOS_API_KEY;
    else process.env.MITEOS_API_KEY = saved;
  }
});

test("close() from an error listener after a failed getTicket() stops the client", async () => {
  let calls = 0;
  const c = new MiteosStream({ url: "http://x", getTicket: async () => { calls++; throw new Error("no session"); }, transport: fake.transport });
  c.on("error", () => c.close());
  const closed = nextEmit(c, "closed");
  c.connect();
  await closed;
  mock.timers.tick(60_000);
  await flush();
  assert.equal(c.state, "closed");
  assert.equal(calls, 1);
});

test("heartbeat: a silent connection is pinged after heartbeatMs, and reconnects when no pong comes", async () => {
  const c = client({ heartbeatMs: 20_000, pingTimeoutMs: 5000 });
  c.connect();
  const s = fake.last.open().authSuccess();
  mock.timers.tick(19_999);
  s.event("tasks", "keeps.it.alive");
  mock.timers.tick(19_999);
  assert.deepEqual(s.sentOf("ping"), [], "any message resets the idle timer");
  mock.timers.tick(1);
  assert.equal(s.sentOf("ping").length, 1);
  s.push({ type: "pong" });
  assert.equal(c.state, "connected");
  mock.timers.tick(20_000);
  assert.equal(s.sentOf("ping").length, 2, "pinged again after another silent period");
  let d;
  c.on("disconnected", (x) => (d = x));
  mock.timers.tick(5000); // no pong
  await flush(); // the ping's rejection is handled in a promise callback
  assert.equal(c.state, "reconnecting");
  assert.equal(d.reason, "heartbeat timeout");
  assert.ok(s.closedByClient, "the dead socket is closed");
  mock.timers.tick(d.reconnectInMs);
  assert.equal(fake.sockets.length, 2);
});

test("heartbeat 0 never pings", () => {
  const c = client({ heartbeatMs: 0 });
  c.connect();
  const s = fake.last.open().authSuccess();
  mock.timers.tick(10 * 60_000);
  assert.deepEqual(s.sentOf("ping"), []);
  assert.equal(c.state, "connected");
});
