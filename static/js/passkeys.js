// Passkey ceremonies for the sign-in, settings and consent pages. No inline script: the CSP
// is script-src 'self'. Buttons declare what they do with data-passkey.
"use strict";
(() => {
  const status = (text) => { const el = document.getElementById("kb-status"); if (el) el.textContent = text; };
  const fail = (text) => {
    status("");
    const el = document.getElementById("kb-error");
    if (el) el.textContent = text;
  };

  const post = (url, body) => window.kb.post(url, body);

  function explain(error) {
    if (error && error.name === "NotAllowedError") return "The passkey prompt was cancelled or timed out. Try again.";
    if (error && error.name === "InvalidStateError") return "This device already holds a passkey for this account.";
    if (error && error.name === "SecurityError") return "Passkeys do not work on this address. Open keybroker at its public URL.";
    return (error && error.message) || "Something went wrong. Try again.";
  }

  const ceremonies = {
    async register() {
      const start = await post("/auth/register/options");
      const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(start.publicKey);
      status("Follow your device's prompt to create the passkey…");
      const credential = await navigator.credentials.create({ publicKey });
      await post("/auth/register/verify", { ceremony: start.ceremony, credential: credential.toJSON() });
    },
    async login() {
      const start = await post("/auth/login/options");
      const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(start.publicKey);
      status("Follow your device's prompt to sign in…");
      const credential = await navigator.credentials.get({ publicKey });
      await post("/auth/login/verify", { ceremony: start.ceremony, credential: credential.toJSON() });
    },
    async add() {
      const start = await post("/auth/passkeys/options");
      let confirm;
      if (start.confirm) {
        // Strict custody: an existing passkey opens the vault so the new one gets a key slot.
        const first = await post("/auth/confirm/options");
        status("First confirm with a passkey you already have…");
        const existing = await navigator.credentials.get({
          publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(first.publicKey) });
        confirm = { ceremony: first.ceremony, credential: existing.toJSON() };
      }
      const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(start.publicKey);
      status("Follow your device's prompt to create the new passkey…");
      const credential = await navigator.credentials.create({ publicKey });
      const nameInput = document.getElementById("passkey-name");
      await post("/auth/passkeys/verify", {
        ceremony: start.ceremony, credential: credential.toJSON(), name: nameInput ? nameInput.value : "",
        confirm,
      });
    },
  };

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-passkey]");
    if (!button) return;
    const run = ceremonies[button.dataset.passkey];
    if (!run) return;
    if (!window.PublicKeyCredential || !PublicKeyCredential.parseCreationOptionsFromJSON) {
      fail("This browser does not support passkeys. Use a current Chrome, Edge, Safari or Firefox.");
      return;
    }
    const container = button.closest("[data-next]");
    button.disabled = true;
    fail("");
    try {
      await run();
      status("Done.");
      window.location.assign((container && container.dataset.next) || "/settings");
    } catch (error) {
      fail(explain(error));
    } finally {
      button.disabled = false;
    }
  });
})();
