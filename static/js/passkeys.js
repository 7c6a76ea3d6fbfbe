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
  let pendingConfirm = null;  // the add step's assertion, until the create step posts it

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
    // Adding a passkey takes two steps, each its own click (Safari wants a gesture for each
    // ceremony): first confirm with a passkey the account already has (a session alone must
    // not add a way in), then create the new one, often on another authenticator.
    async add() {
      const first = await post("/auth/confirm/options");
      status("Confirm with a passkey you already have…");
      const existing = await navigator.credentials.get({
        publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(first.publicKey) });
      pendingConfirm = { ceremony: first.ceremony, credential: existing.toJSON() };
      const next = document.querySelector('button[data-passkey="create"]');
      if (next) { next.hidden = false; next.focus(); }
      status("Confirmed. Now create the new passkey on the device that will hold it.");
      return false;  // stay on the page for the second step
    },
    async create() {
      if (!pendingConfirm) throw new Error("Confirm with a passkey you already have first.");
      const start = await post("/auth/passkeys/options");
      const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(start.publicKey);
      status("Follow your device's prompt to create the new passkey…");
      const credential = await navigator.credentials.create({ publicKey });
      const nameInput = document.getElementById("passkey-name");
      const confirm = pendingConfirm;
      pendingConfirm = null;  // single use, like its challenge
      return post("/auth/passkeys/verify", {
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
      const result = await run();
      if (result === false) return;
      status("Done.");
      const next = (result && result.redirect) || (container && container.dataset.next);
      window.location.assign(window.kb.safeNext(next));
    } catch (error) {
      fail(explain(error));
    } finally {
      button.disabled = false;
    }
  });
})();
