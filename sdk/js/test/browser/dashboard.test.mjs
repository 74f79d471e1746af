// The example dashboard in a real browser (Debian's chromium, headless, via playwright-core)
// against the real binary and the example's ticket backend: events appear in the DOM, a
// server restart shows `reconnecting` then `connected`, nothing published is lost, and a
// production key is refused in the browser. Saves a screenshot (UPDATE_SCREENSHOT=1 writes
// examples/dashboard/screenshot.png, else a temp file).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { TestServer, waitForLines } from "../support/server.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const example = resolve(here, "../../../../examples/dashboard");
const browserPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

let server, backend, browser;
before(async () => {
  assert.ok(existsSync(browserPath), `no browser at ${browserPath}: apt-get install chromium (or set CHROMIUM_PATH)`);
  server = await TestServer.start();
  backend = spawn(process.execPath, [join(example, "server.mjs")], {
    env: { ...process.env, PORT: "0", MITEOS_API_KEY: server.key, MITEOS_STREAM_URL: server.url },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const [[, url]] = await waitForLines(backend, [/^dashboard on (http:\/\/\S+)/], 10_000, "dashboard backend");
  backend.url = url;
  browser = await chromium.launch({ executablePath: browserPath, headless: true, args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      // No network here but loopback: keep Chromium from trying its own services.
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ] });
});
after(async () => {
  await browser?.close();
  backend?.kill("SIGTERM");
  await server?.cleanup();
});

const rows = (topic) => `[data-topic="${topic}"] li[data-id]`;

test("the dashboard shows live events, survives a server restart visibly, and loses nothing", async () => {
  const page = await browser.newPage({ viewport: { width: 1180, height: 640 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e));
  await page.goto(backend.url);
  await page.waitForSelector('#state[data-state="connected"]');
  // Record every state the pill shows from now on.
  await page.evaluate(() => {
    const pill = document.querySelector("#state");
    window.shownStates = [];
    new MutationObserver(() => window.shownStates.push(pill.textContent)).observe(pill, { childList: true, characterData: true, subtree: true });
  });

  const published = [];
  const publish = async (channel, event, data) => published.push((await server.publish(channel, event, data)).id);
  await publish("tasks", "task.created", { task_id: "t_1", title: "Sync invoices" });
  await publish("agents", "agent.started", { agent_id: "ag_1", model: "planner" });
  await publish("tasks", "task.completed", { task_id: "t_1", duration_ms: 1280 });
  await page.waitForFunction(([t, a]) => document.querySelectorAll(t).length === 2 && document.querySelectorAll(a).length === 1, [rows("tasks"), rows("agents")]);
  assert.equal(await page.textContent(`${rows("tasks")}:first-child .name`), "task.completed", "newest first");

  server = await server.restart(); // SIGTERM: every socket is closed with 1001, then the same port again
  await page.waitForFunction(() => {
    const s = window.shownStates;
    const i = s.indexOf("reconnecting");
    return i >= 0 && s.slice(i).includes("connected") && s.at(-1) === "connected";
  }, null, { timeout: 30_000 });
  assert.equal(await page.textContent("#reconnects"), "1");

  await publish("tasks", "task.failed", { task_id: "t_2", error: "timeout" });
  await publish("agents", "agent.finished", { agent_id: "ag_1", steps: 4 });
  await page.waitForFunction(([t, a]) => document.querySelectorAll(t).length === 3 && document.querySelectorAll(a).length === 2, [rows("tasks"), rows("agents")]);
  const shown = await page.$$eval("li[data-id]", (lis) => lis.map((li) => li.dataset.id));
  assert.deepEqual([...shown].sort(), [...published].sort(), "every published event shown, each once");
  assert.equal(await page.textContent("#count"), "5");
  assert.match(await page.textContent("#log"), /disconnected: 1001 the server is shutting down/);

  const path = process.env.UPDATE_SCREENSHOT ? join(example, "screenshot.png") : join(tmpdir(), "miteos-dashboard.png");
  await page.screenshot({ path });
  assert.deepEqual([...readFileSync(path).subarray(1, 4)], [...Buffer.from("PNG")]);
  assert.deepEqual(pageErrors, []);
  await page.close();
});

test("in a browser the SDK refuses a production key and needs a ticket callback", async () => {
  const page = await browser.newPage();
  await page.goto(`${backend.url}/index.html`);
  const outcome = await page.evaluate(async (url) => {
    const { MiteosStream } = await import("/sdk/index.js");
    const attempt = (options) => {
      try {
        new MiteosStream({ url, ...options });
        return "accepted";
      } catch (e) {
        return `${e.name}: ${e.message}`;
      }
    };
    return { live: attempt({ apiKey: "mt_live_sk_notarealkey" }), none: attempt({}), test: attempt({ apiKey: "mt_test_sk_dev" }) };
  }, server.url);
  assert.match(outcome.live, /^CredentialError: a production key/);
  assert.match(outcome.none, /^CredentialError: no credential: in a browser pass getTicket/);
  assert.equal(outcome.test, "accepted", "test keys are allowed for development, as the server allows them");
  await page.close();
});
