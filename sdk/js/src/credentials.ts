/**
 * Credentials and endpoints: an API key (Node: from `MITEOS_API_KEY` by default) or a
 * `getTicket()` callback (browsers), the refusal of production keys in a browser, and the
 * WebSocket URL for one attempt.
 *
 * Owns: which secret goes where. May use: nothing. Never: logging a secret.
 */

/** What `getTicket()` may return: the ticket string or the mint response itself. */
export type TicketResult = string | { ticket: string };

export type Credential =
  | { kind: "key"; token: string }
  | { kind: "ticket"; getTicket: () => TicketResult | Promise<TicketResult> };

/** True in a browser page or worker (not in Node, even with a DOM shim). */
export function isBrowser(): boolean {
  const g = globalThis as { process?: { versions?: { node?: string } }; window?: unknown; self?: unknown; document?: unknown };
  if (g.process?.versions?.node) return false;
  return typeof g.window !== "undefined" || typeof g.self !== "undefined";
}

function envKey(): string | undefined {
  const g = globalThis as { process?: { env?: Record<string, string | undefined> } };
  const value = g.process?.env?.MITEOS_API_KEY;
  return value && value.trim() !== "" ? value.trim() : undefined;
}

export class CredentialError extends Error {
  override name = "CredentialError";
}

/** Picks the credential; throws for none, both, or a production key in a browser. */
export function resolveCredential(options: {
  apiKey?: string;
  getTicket?: () => TicketResult | Promise<TicketResult>;
}): Credential {
  if (options.apiKey !== undefined && options.getTicket) {
    throw new CredentialError("pass either apiKey or getTicket, not both");
  }
  if (options.getTicket) return { kind: "ticket", getTicket: options.getTicket };
  const browser = isBrowser();
  const token = options.apiKey ?? (browser ? undefined : envKey());
  if (!token) {
    throw new CredentialError(
      browser
        ? "no credential: in a browser pass getTicket(), which asks your backend for a ticket"
        : "no credential: pass apiKey, set MITEOS_API_KEY, or pass getTicket()",
    );
  }
  assertKeyAllowedHere(token);
  return { kind: "key", token };
}

/** A production key never runs in a browser (SPEC §4: browsers use tickets). */
export function assertKeyAllowedHere(token: string): void {
  if (isBrowser() && token.startsWith("mt_live_")) {
    throw new CredentialError(
      "a production key (mt_live_…) must not be used in a browser: mint a ticket on your backend and pass getTicket()",
    );
  }
}

export function ticketString(result: TicketResult): string {
  const ticket = typeof result === "string" ? result : result?.ticket;
  if (typeof ticket !== "string" || ticket === "") {
    throw new CredentialError("getTicket() returned no ticket");
  }
  return ticket;
}

/**
 * The stream URL from a base (`https://stream.example.com`, `ws://127.0.0.1:8080`, or a
 * full `…/v1/ws`): http becomes ws, https becomes wss, the path defaults to `/v1/ws`.
 */
export function streamUrl(base: string): URL {
  const url = new URL(base);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  else if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new TypeError(`url must be http(s) or ws(s), got ${url.protocol}`);
  }
  if (url.pathname === "/" || url.pathname === "") url.pathname = "/v1/ws";
  url.search = "";
  url.hash = "";
  return url;
}

/** The base URL when none is passed: `MITEOS_STREAM_URL` in Node, the page's origin in a browser. */
export function defaultBaseUrl(): string {
  const g = globalThis as { process?: { env?: Record<string, string | undefined> }; location?: { origin?: string } };
  const fromEnv = g.process?.env?.MITEOS_STREAM_URL;
  if (fromEnv) return fromEnv;
  if (isBrowser() && g.location?.origin) return g.location.origin;
  throw new TypeError("no url: pass url (e.g. https://stream.example.com) or set MITEOS_STREAM_URL");
}
