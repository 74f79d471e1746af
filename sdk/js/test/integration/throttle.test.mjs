// A refused upgrade for too many connections (HTTP 429 with Retry-After) makes the client
// wait longer than a normal reconnect, then it gets in once a slot frees up.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { MiteosStream } from "../../dist/node.js";
import { TestServer, until } from "../support/server.mjs";

let server;
after(() => server?.cleanup());

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
