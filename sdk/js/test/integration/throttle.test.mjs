// A refused upgrade for too many connections (HTTP 429 with Retry-After) makes the client
// wait longer than a normal reconnect, then it gets in once a slot frees up.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { MiteosStream } from "../../dist/node.js";
import { TestServer, until } from "../support/server.mjs";

let server, chatty;
after(async () => {
  await server?.cleanup();
  await chatty?.cleanup();
});

test("429 too many connections: a throttled wait (≥ throttleMs and Retry-After), then connected", async () => {
  server = await TestServer.start({ env: { MITEOS_MAX_CONNECTIONS_PER_KEY: "1" } });
  const opts = { url: server.url, apiKey: server.key, backoff: { initialMs: 50, maxMs: 100, throttleMs: 400 } };
  const first = new MiteosStream(opts).connect();
  await first.ready();
  const second = new MiteosStream(opts);
  const disconnected = until(second, "disconnected", () => true);
  second.connect();
  const d = await disconnected;
  assert.equal(d.http?.status, 429);
  assert.equal(d.http?.code, "rate_limited");
  const floor = Math.max(400, d.http?.retryAfterMs ?? 0);
  assert.ok(d.reconnectInMs >= floor && d.reconnectInMs < floor + 50, `${d.reconnectInMs} vs floor ${floor}`);
  assert.equal(second.state, "reconnecting");
  const connected = until(second, "connected", () => true, 30_000);
  first.close();
  await connected;
  second.close();
});

test("4008 (client message rate exceeded) is reported as a client bug, and the client reconnects", async () => {
  chatty = await TestServer.start({ env: { MITEOS_CLIENT_MESSAGES_PER_SECOND: "1", MITEOS_CLIENT_MESSAGE_BURST: "3" } });
  const c = new MiteosStream({ url: chatty.url, apiKey: chatty.key, backoff: { initialMs: 50, maxMs: 100, throttleMs: 100 } });
  const bug = until(c, "error", (e) => e.kind === "client_bug");
  const disconnected = until(c, "disconnected", () => true);
  c.connect();
  await c.ready();
  const pings = Array.from({ length: 10 }, () => c.ping().catch((e) => e));
  const [error, d] = await Promise.all([bug, disconnected]);
  assert.equal(error.code, "4008");
  assert.equal(d.code, 4008);
  assert.ok(d.reconnectInMs >= 100, "a throttled wait");
  assert.ok((await Promise.all(pings)).some((p) => p instanceof Error), "the pings cut off by the close fail");
  await until(c, "connected", (i) => i.reconnect);
  c.close();
});
