// Backoff: bounded, exponential, fully jittered; throttled waits have a floor.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff } from "../../dist/node.js";

test("ceilings double from initialMs and stop at maxMs", () => {
  const b = new Backoff({ initialMs: 100, maxMs: 2000 }, () => 0);
  const ceilings = [];
  for (let i = 0; i < 8; i++) {
    ceilings.push(b.ceiling());
    b.next();
  }
  assert.deepEqual(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
  for (let i = 0; i < 2000; i++) b.next(); // 2^2000 is Infinity: still capped
  assert.equal(b.ceiling(), 2000);
});

test("full jitter: every delay in [0, ceiling), spread over the whole range", () => {
  const b = new Backoff({ initialMs: 1000, maxMs: 1000 });
  const delays = Array.from({ length: 2000 }, () => b.next());
  assert.ok(delays.every((d) => d >= 0 && d < 1000 && Number.isInteger(d)));
  const mean = delays.reduce((a, d) => a + d, 0) / delays.length;
  assert.ok(mean > 400 && mean < 600, `mean ${mean}`);
  assert.ok(Math.min(...delays) < 100 && Math.max(...delays) > 900, "uses the whole range");
  assert.ok(new Set(delays).size > 500, "not a few fixed values");
});

test("the random source's extremes map to 0 and just under the ceiling", () => {
  assert.equal(new Backoff({ initialMs: 500 }, () => 0).next(), 0);
  assert.equal(new Backoff({ initialMs: 500 }, () => 0.9999999).next(), 499);
});

test("throttled delays are at least throttleMs, or a longer Retry-After, plus jitter", () => {
  const b = new Backoff({ initialMs: 100, throttleMs: 5000 }, () => 0.5);
  assert.equal(b.next("throttled"), 5050);
  assert.equal(b.next("throttled", 9000), 9100);
  assert.equal(b.next("throttled", 10), 5200);
});

test("reset starts over; attempts counts delays", () => {
  const b = new Backoff({ initialMs: 100 }, () => 0.5);
  b.next();
  b.next();
  assert.equal(b.attempts, 2);
  b.reset();
  assert.equal(b.attempts, 0);
  assert.equal(b.next(), 50);
});

test("nonsense options are refused", () => {
  assert.throws(() => new Backoff({ initialMs: 0 }), RangeError);
  assert.throws(() => new Backoff({ maxMs: -1 }), RangeError);
  assert.throws(() => new Backoff({ initialMs: 1000, maxMs: 10 }), RangeError);
  assert.throws(() => new Backoff({ throttleMs: NaN }), RangeError);
});
