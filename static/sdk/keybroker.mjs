// src/keybroker.ts
var KeybrokerError = class extends Error {
  constructor(code, message) {
    super(message);
    this.name = "KeybrokerError";
    this.code = code;
  }
};
var POLL_MS = 250;
var DEFAULT_TIMEOUT_MS = 5 * 60 * 1e3;
function base64url(bytes) {
  let text = "";
  bytes.forEach((b) => {
    text += String.fromCharCode(b);
  });
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
function randomString(bytes = 32) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}
async function s256(verifier) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}
function brokerOrigin(broker) {
  return new URL(broker).origin;
}
function openPopup() {
  const width = 480;
  const height = 720;
  const left = Math.max(0, (window.screenX || 0) + ((window.outerWidth || width) - width) / 2);
  const top = Math.max(0, (window.screenY || 0) + ((window.outerHeight || height) - height) / 2);
  return window.open(
    "about:blank",
    "keybroker",
    `popup=yes,width=${width},height=${height},left=${left},top=${top}`
  );
}
function requestOpenAIAPI(options) {
  const popup = openPopup();
  if (!popup) {
    return Promise.reject(new KeybrokerError(
      "popup_blocked",
      "The browser blocked the sign-in window. Call requestOpenAIAPI() in a click handler, or allow popups."
    ));
  }
  const origin = brokerOrigin(options.broker);
  const state = randomString();
  const verifier = randomString(48);
  const clientId = window.location.origin;
  return new Promise((resolve, reject) => {
    let settled = false;
    const timers = [];
    const finish = (error, value) => {
      if (settled) return;
      settled = true;
      window.removeEventListener("message", onMessage);
      timers.forEach((t) => clearTimeout(t));
      clearInterval(poll);
      if (error) {
        if (!popup.closed) popup.close();
        reject(error);
      } else {
        resolve(value);
      }
    };
    const onMessage = (event) => {
      if (event.origin !== origin || event.source !== popup) return;
      const data = event.data;
      if (!data || typeof data !== "object" || data.type !== "authorization_response") return;
      if (data.state !== state) return;
      if (typeof data.iss !== "string" || data.iss !== options.broker.replace(/\/+$/, "")) {
        finish(new KeybrokerError("invalid_response", "The response did not come from this broker."));
        return;
      }
      if (typeof data.error === "string") {
        const code = data.error === "access_denied" ? "access_denied" : "invalid_response";
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
        (error) => finish(error instanceof KeybrokerError ? error : new KeybrokerError("invalid_response", String(error)))
      );
    };
    const poll = setInterval(() => {
      if (popup.closed && !settled) {
        finish(new KeybrokerError("popup_closed", "The sign-in window was closed before access was granted."));
      }
    }, POLL_MS);
    timers.push(setTimeout(() => finish(new KeybrokerError(
      "timeout",
      "The sign-in window did not answer in time."
    )), options.timeoutMs ?? DEFAULT_TIMEOUT_MS));
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
        scope: (options.scopes && options.scopes.length ? options.scopes : ["chat", "models"]).join(" ")
      });
      if (options.models?.length) params.set("models", options.models.join(" "));
      if (options.budgetUSD !== void 0) params.set("budget", String(options.budgetUSD));
      if (options.rpm !== void 0) params.set("rpm", String(options.rpm));
      if (options.expiresInDays !== void 0) params.set("expires_in_days", String(options.expiresInDays));
      popup.location.href = `${origin}/authorize?${params}`;
    }, (error) => finish(new KeybrokerError("invalid_response", `WebCrypto failed: ${String(error)}`)));
  });
}
async function exchange(origin, clientId, code, verifier) {
  const response = await fetch(`${origin}/oauth/token`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "authorization_code", code, code_verifier: verifier, client_id: clientId })
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok || typeof data.access_token !== "string" || typeof data.base_url !== "string") {
    throw new KeybrokerError("invalid_response", `The token exchange failed: ${data.error_description || data.error || response.status}`);
  }
  return { apiKey: data.access_token, baseURL: data.base_url, scope: data.scope ?? "", expiresIn: data.expires_in ?? 0 };
}
async function revoke(apiKey, options) {
  const response = await fetch(`${brokerOrigin(options.broker)}/oauth/revoke`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token: apiKey, token_type_hint: "access_token", client_id: window.location.origin })
  });
  if (!response.ok) {
    throw new KeybrokerError("invalid_response", `Revocation failed (${response.status}).`);
  }
}
export {
  KeybrokerError,
  requestOpenAIAPI,
  revoke
};
