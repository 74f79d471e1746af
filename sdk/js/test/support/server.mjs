// Test harness: the real miteos-stream binary on 127.0.0.1 port 0 with a fresh data dir,
// its admin publish endpoint, the key API, and (for Redis mode) a redis-server of its own.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

/** The server binary: MITEOS_STREAM_BIN, else the newest of target/{release,debug}. */
export function serverBinary() {
  if (process.env.MITEOS_STREAM_BIN) return process.env.MITEOS_STREAM_BIN;
  const candidates = ["release", "debug"]
    .map((p) => join(repo, "target", p, "miteos-stream"))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (candidates.length === 0) {
    throw new Error("no miteos-stream binary: run `cargo build` (or set MITEOS_STREAM_BIN)");
  }
  return candidates[0];
}

/** Resolves with a line of `stream` matching `pattern` (its match), or rejects on timeout/exit. */
export function waitForLines(proc, patterns, timeoutMs, label) {
  return new Promise((resolvePromise, reject) => {
    const found = new Array(patterns.length).fill(null);
    let buffer = "";
    let stderr = "";
    const timer = setTimeout(() => finish(new Error(`${label}: no ${patterns.filter((_, i) => !found[i]).join(", ")} within ${timeoutMs} ms\n${stderr}`)), timeoutMs);
    const onData = (chunk) => {
      buffer += chunk;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        patterns.forEach((p, i) => {
          const m = !found[i] && line.match(p);
          if (m) found[i] = m;
        });
        if (found.every(Boolean)) finish(null);
      }
    };
    const onErr = (chunk) => (stderr = (stderr + chunk).slice(-4000));
    const onExit = (code) => finish(new Error(`${label} exited (${code}) before it was ready\n${stderr}`));
    function finish(error) {
      clearTimeout(timer);
      proc.stdout.off("data", onData);
      proc.stderr.off("data", onErr);
      proc.off("exit", onExit);
      // Keep draining the pipes so a chatty server never blocks on a full pipe.
      proc.stdout.resume();
      proc.stderr.resume();
      if (error) reject(error);
      else resolvePromise(found);
    }
    proc.stdout.setEncoding("utf8");
    proc.stderr.setEncoding("utf8");
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onErr);
    proc.on("exit", onExit);
  });
}

export class TestServer {
  /** Starts a server; `listen` fixes the public address (e.g. to restart on the same port). */
  static async start({ dataDir, listen = "127.0.0.1:0", redisUrl, env = {}, adminToken, expectBootstrap } = {}) {
    const fresh = !dataDir;
    dataDir ??= mkdtempSync(join(tmpdir(), "miteos-sdk-"));
    adminToken ??= randomBytes(24).toString("hex");
    const args = ["serve", "--listen", listen, "--admin-listen", "127.0.0.1:0", "--data-dir", dataDir];
    if (redisUrl) args.push("--redis-url", redisUrl);
    const proc = spawn(serverBinary(), args, {
      env: { ...process.env, MITEOS_ADMIN_TOKEN: adminToken, RUST_LOG: "warn", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const patterns = [/^listening on (http:\/\/\S+)/, /^admin listening on (http:\/\/\S+)/];
    if (expectBootstrap ?? (fresh && !redisUrl)) patterns.push(/^bootstrap key \(shown once\): (\S+)/);
    let lines;
    try {
      lines = await waitForLines(proc, patterns, 30_000, "miteos-stream");
    } catch (e) {
      proc.kill("SIGKILL");
      throw e;
    }
    const server = new TestServer();
    Object.assign(server, { proc, dataDir, adminToken, fresh, url: lines[0][1], adminUrl: lines[1][1], key: lines[2]?.[1] });
    server.exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
    return server;
  }

  get port() {
    return Number(new URL(this.url).port);
  }

  /** SIGTERM (drain: every socket gets 1001) and wait for the exit. */
  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill("SIGTERM");
    return this.exited;
  }

  /** Stops, then starts again on the same public port with the same data (keys persist). */
  async restart(options = {}) {
    await this.stop();
    const next = await TestServer.start({ dataDir: this.dataDir, listen: `127.0.0.1:${this.port}`, adminToken: this.adminToken, ...options });
    next.key = this.key;
    next.ownsDir = this.fresh || this.ownsDir;
    return next;
  }

  async cleanup() {
    await this.stop();
    if (this.fresh || this.ownsDir) rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** Publishes through the admin listener; returns the server's answer. */
  async publish(channel, event, data = {}, { account = "acct_local", environment = "test" } = {}) {
    const res = await fetch(`${this.adminUrl}/internal/v1/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${this.adminToken}`, "content-type": "application/json" },
      body: JSON.stringify({ account_id: account, environment, channel, event, data }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(`publish: ${res.status} ${JSON.stringify(body)}`);
    return body;
  }

  /** A key API call with `key` (default: the bootstrap key). */
  async api(method, path, body, key = this.key) {
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, body: await res.json().catch(() => null) };
  }

  async createKey(scopes, name = "sdk-test") {
    const { status, body } = await this.api("POST", "/v1/api-keys", { name, scopes });
    if (status !== 201) throw new Error(`create key: ${status} ${JSON.stringify(body)}`);
    return body;
  }
}

export async function freePort() {
  return new Promise((resolvePromise, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolvePromise(port));
    });
  });
}

/** A redis-server of the test's own on a free port (never 6379), without persistence. */
export class RedisServer {
  static async start() {
    const port = await freePort();
    const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] });
    const r = new RedisServer();
    Object.assign(r, { proc, port, url: `redis://127.0.0.1:${port}` });
    r.exited = new Promise((res) => proc.once("exit", res));
    await waitForLines(proc, [/Ready to accept connections/], 10_000, "redis-server");
    return r;
  }
  async stop() {
    if (this.proc.exitCode === null) this.proc.kill("SIGTERM");
    await this.exited;
  }
}

/** Resolves with the first `name` event of `client` for which `predicate` holds. */
export function until(client, name, predicate, timeoutMs = 10_000) {
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${name}`));
    }, timeoutMs);
    const off = client.on(name, (arg) => {
      if (!predicate(arg)) return;
      clearTimeout(timer);
      off();
      resolvePromise(arg);
    });
  });
}
