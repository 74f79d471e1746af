/**
 * The backend half of browser auth: `createTicket()` mints a single-use, 60-second
 * connection ticket with the backend's API key (`POST /v1/ws/tickets`, SPEC §3), optionally
 * narrowed to some read scopes, for the backend to hand to its page.
 *
 * Owns: the ticket request. May use: credentials. Never: logging the key or the ticket.
 */

import { assertKeyAllowedHere, CredentialError, defaultBaseUrl } from "./credentials.js";

export interface CreateTicketOptions {
  /** The backend's API key. Default: `MITEOS_API_KEY`. */
  apiKey?: string;
  /** The server's base URL (`https://…`; `ws(s)://` is accepted too). Default: `MITEOS_STREAM_URL`. */
  url?: string;
  /** Read scopes to narrow the ticket to (each must be held by the key), e.g. `["tasks.read"]`. */
  scopes?: string[];
  /** A fetch implementation (default: the platform's). */
  fetch?: typeof fetch;
  signal?: AbortSignal;
}

export interface Ticket {
  ticket: string;
  expires_at: string;
  scopes: string[];
}

/** A refused mint: the server's status and error code (`scope_escalation`, `revoked_api_key`, …). */
export class TicketError extends Error {
  override name = "TicketError";
  constructor(
    message: string,
    readonly status: number,
    readonly code?: string,
    readonly param?: string,
  ) {
    super(message);
  }
}

export async function createTicket(options: CreateTicketOptions = {}): Promise<Ticket> {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  const apiKey = options.apiKey ?? env?.MITEOS_API_KEY;
  if (!apiKey) throw new CredentialError("createTicket: pass apiKey or set MITEOS_API_KEY");
  assertKeyAllowedHere(apiKey);
  const base = new URL(options.url ?? defaultBaseUrl());
  if (base.protocol === "ws:") base.protocol = "http:";
  else if (base.protocol === "wss:") base.protocol = "https:";
  const endpoint = new URL("/v1/ws/tickets", base);
  const doFetch = options.fetch ?? fetch;
  const init: RequestInit = {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(options.scopes ? { scopes: options.scopes } : {}),
  };
  if (options.signal) init.signal = options.signal;
  const response = await doFetch(endpoint, init);
  const body = (await response.json().catch(() => null)) as
    | (Partial<Ticket> & { error?: { code?: string; message?: string; param?: string } })
    | null;
  if (!response.ok || typeof body?.ticket !== "string") {
    const error = body?.error;
    throw new TicketError(
      `ticket refused: ${response.status} ${error?.code ?? ""} ${error?.message ?? ""}`.trim(),
      response.status,
      error?.code,
      error?.param,
    );
  }
  return { ticket: body.ticket, expires_at: String(body.expires_at ?? ""), scopes: body.scopes ?? [] };
}
