// The consent popup: "Allow" confirms with a fresh passkey assertion, "Deny" does not; the
// result goes to the app by postMessage to its exact origin, or by redirect; a device (RFC 8628)
// polls for it, so the page only says it is done.
"use strict";
(() => {
  const setText = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };

  function deliver(result) {
    if (result.mode === "device") {
      // The device flow: the app learns the answer by polling; this page just says so.
      document.getElementById("consent").hidden = true;
      setText("kb-device-done", result.message);
      return;
    }
    if (result.mode === "web_message") {
      if (window.opener) {
        // targetOrigin is the app's exact origin: never "*" (HTML Standard, postMessage).
        window.opener.postMessage(result.message, result.origin);
        if (!result.message.error) window.close();
      } else {
        setText("kb-error", "The app's window is gone. Return to the app and try again.");
      }
      return;
    }
    window.location.assign(result.location);
  }

  const post = (url, body) => window.kb.post(url, body);

  function choices(form) {
    const data = new FormData(form);
    return {
      scopes: data.getAll("scopes"), models: data.get("models") || "",
      budget_usd: data.get("budget_usd"), rpm: data.get("rpm"), days: data.get("days"),
    };
  }

  async function decide(form, decision) {
    const body = { query: form.dataset.query, decision };
    if (decision === "allow") {
      body.choices = choices(form);
      // A device request's confirmation is bound to that request (its own options endpoint).
      const start = await post(form.dataset.confirm || "/auth/confirm/options");
      setText("kb-status", "Confirm with your passkey…");
      const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(start.publicKey);
      const credential = await navigator.credentials.get({ publicKey });
      body.ceremony = start.ceremony;
      body.credential = credential.toJSON();
    }
    deliver(await post(form.dataset.action || "/authorize/decision", body));
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-decision]");
    if (!button) return;
    const form = document.getElementById("consent");
    setText("kb-error", "");
    form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      await decide(form, button.dataset.decision);
    } catch (error) {
      setText("kb-status", "");
      setText("kb-error", error && error.name === "NotAllowedError"
        ? "The passkey prompt was cancelled. Allow again to confirm." : (error.message || String(error)));
      form.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    }
  });

  const pending = document.getElementById("kb-delivery");
  if (pending) deliver({ mode: "web_message", origin: pending.dataset.origin, message: JSON.parse(pending.dataset.message) });
})();
