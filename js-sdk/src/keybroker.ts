// keybroker browser SDK: "Sign in with OpenAI" in a popup (OAuth 2.1 code flow + PKCE,
// response_mode=web_message). The page gets a scoped, revocable apiKey and a baseURL that
// the official openai SDK accepts as is; it never sees the owner's OpenAI key.

export type KeybrokerErrorCode =
  | "popup_blocked"
  | "popup_closed"
  | "access_denied"
  | "timeout"
  | "invalid_response";

export class KeybrokerError extends Error {
  readonly code: KeybrokerErrorCode;
  constructor(code: KeybrokerErrorCode, message: string) {
    super(message);
    this.name = "KeybrokerError";
    this.code = code;
  }
}

export interface RequestOpenAIAPIOptions {
  /** The broker's public URL, e.g. "https://keys.example.com". */
  broker: string;
  /** Scopes to ask for: chat, embeddings, images, audio, files, moderations, models, batches, fine_tuning (the owner decides; batches and fine_tuning start unticked). */
  scopes?: string[];
  /** Models the app needs; the owner can narrow the list. */
  models?: string[];
  /** Suggested monthly budget in USD; the owner decides. */
  budgetUSD?: number;
  /** Suggested requests-per-minute limit. */
  rpm?: number;
  /** Suggested expiry in days. */
  expiresInDays?: number;
  /** Give up after this long (default 5 minutes). */
  timeoutMs?: number;
}

export interface OpenAIAPIAccess {
  apiKey: string;
  baseURL: string;
  scope: string;
  expiresIn: number;
}

const POLL_MS = 250;
const DEFAULT_TIMEOUT_MS = 5 * 60 * 1000;

function base64url(bytes: Uint8Array): string {
  let text = "";
  bytes.forEach((b) => { text += String.fromCharCode(b); });
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString(bytes = 32): string {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

async function s256(verifier: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

function brokerOrigin(broker: string): string {
  return new URL(broker).origin;
}

function openPopup(): Window | null {
  const width = 480;
  const height = 720;
  const left = Math.max(0, (window.screenX || 0) + ((window.outerWidth || width) - width) / 2);
  const top = Math.max(0, (window.screenY || 0) + ((window.outerHeight || height) - height) / 2);
  return window.open("about:blank", "keybroker",
    `popup=yes,width=${width},height=${height},left=${left},top=${top}`);
}

/**
 * Ask the person for access to the OpenAI API. Call it directly in a click handler: the
 * popup is opened before anything is awaited, so browsers do not block it.
 */
export function requestOpenAIAPI(options: RequestOpenAIAPIOptions): Promise<OpenAIAPIAccess> {
  const popup = openPopup();
  if (!popup) {
    return Promise.reject(new KeybrokerError("popup_blocked",
      "The browser blocked the sign-in window. Call requestOpenAIAPI() in a click handler, or allow popups."));
  }
  const origin = brokerOrigin(options.broker);
  const state = randomString();
  const verifier = randomString(48);
  const clientId = window.location.origin;

  return new Promise<OpenAIAPIAccess>((resolve, reject) => {
    let settled = false;
    const timers: ReturnType<typeof setTimeout>[] = [];
    const finish = (error: KeybrokerError | null, value?: OpenAIAPIAccess) => {
      if (settled) return;
      settled = true;
      window.removeEventListener("message", onMessage);
      timers.forEach((t) => clearTimeout(t));
      clearInterval(poll);
      if (error) {
        if (!popup.closed) popup.close();
        reject(error);
      } else {
        resolve(value as OpenAIAPIAccess);
      }
    };

    const onMessage = (event: MessageEvent) => {
      // Only the broker's own window may answer, and only for this request's state.
      if (event.origin !== origin || event.source !== popup) return;
      const data = event.data as Record<string, unknown> | null;
      if (!data || typeof data !== "object" || data.type !== "authorization_response") return;
      if (data.state !== state) return;
      if (typeof data.iss !== "string" || data.iss !== options.broker.replace(/\/+$/, "")) {
        // RFC 9207 §2.4: the response must name its issuer, and it must be this broker; a
        // response without one, or from another issuer, is a mix-up attack. keybroker always
        // sends iss (it advertises authorization_response_iss_parameter_supported).
        finish(new KeybrokerError("invalid_response", "The response did not come from this broker."));
        return;
      }
      if (typeof data.error === "string") {
        const code: KeybrokerErrorCode = data.error === "access_denied" ? "access_denied" : "invalid_response";
        finish(new KeybrokerError(code, String(data.error_description || data.error)));
        return;
      }
      if (typeof data.code !== "string") {
        finish(new KeybrokerError("invalid_response", "The response carried no code."));
        return;
      }
      window.removeEventListener("message", onMessage);
      clearInterval(poll);
      exchange(origin, clientId, data.code, verifier).then(
        (access) => finish(null, access),
        (error: unknown) => finish(error instanceof KeybrokerError ? error
          : new KeybrokerError("invalid_response", String(error))),
      );
    };

    const poll = setInterval(() => {
      if (popup.closed && !settled) {
        finish(new KeybrokerError("popup_closed", "The sign-in window was closed before access was granted."));
      }
    }, POLL_MS);
    timers.push(setTimeout(() => finish(new KeybrokerError("timeout",
      "The sign-in window did not answer in time.")), options.timeoutMs ?? DEFAULT_TIMEOUT_MS));
    window.addEventListener("message", onMessage);

    s256(verifier).then((challenge) => {
      if (settled) return;
      const params = new URLSearchParams({
        response_type: "code",
        response_mode: "web_message",
        client_id: clientId,
        code_challenge: challenge,
        code_challenge_method: "S256",
        state,
        scope: (options.scopes && options.scopes.length ? options.scopes : ["chat", "models"]).join(" "),
      });
      if (options.models?.length) params.set("models", options.models.join(" "));
      if (options.budgetUSD !== undefined) params.set("budget", String(options.budgetUSD));
      if (options.rpm !== undefined) params.set("rpm", String(options.rpm));
      if (options.expiresInDays !== undefined) params.set("expires_in_days", String(options.expiresInDays));
      popup.location.href = `${origin}/authorize?${params}`;
    }, (error: unknown) => finish(new KeybrokerError("invalid_response", `WebCrypto failed: ${String(error)}`)));
  });
}

async function exchange(origin: string, clientId: string, code: string, verifier: string): Promise<OpenAIAPIAccess> {
  const response = await fetch(`${origin}/oauth/token`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "authorization_code", code, code_verifier: verifier, client_id: clientId }),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok || typeof data.access_token !== "string" || typeof data.base_url !== "string") {
    throw new KeybrokerError("invalid_response", `The token exchange failed: ${data.error_description || data.error || response.status}`);
  }
  return { apiKey: data.access_token, baseURL: data.base_url, scope: data.scope ?? "", expiresIn: data.expires_in ?? 0 };
}

/** Sign the app out: the broker revokes the token at once (RFC 7009). */
export async function revoke(apiKey: string, options: { broker: string }): Promise<void> {
  const response = await fetch(`${brokerOrigin(options.broker)}/oauth/revoke`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token: apiKey, token_type_hint: "access_token", client_id: window.location.origin }),
  });
  if (!response.ok) {
    throw new KeybrokerError("invalid_response", `Revocation failed (${response.status}).`);
  }
}
