// Consequential settings actions (remove a passkey, delete the key, delete the account) are
// confirmed with a fresh passkey assertion, then posted as JSON.
"use strict";
(() => {
  // Messages go to the status and alert elements of the button's own section.
  const place = (button, role) => (button.closest("section, main") || document).querySelector(`[role="${role}"]`);

  const post = (url, body) => window.kb.post(url, body);

  async function confirmed(url, extra) {
    const start = await post("/auth/confirm/options");
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(start.publicKey);
    const credential = await navigator.credentials.get({ publicKey });
    return post(url, { ...extra, ceremony: start.ceremony, credential: credential.toJSON() });
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-confirm-action]");
    if (!button) return;
    const status = place(button, "status");
    const alert = place(button, "alert");
    const say = (el, text) => { if (el) el.textContent = text; };
    say(alert, "");
    button.disabled = true;
    try {
      say(status, "Confirm with your passkey…");
      const extra = button.dataset.confirmBody ? JSON.parse(button.dataset.confirmBody) : {};
      let done;
      try {
        done = await confirmed(button.dataset.confirmAction, extra);
      } catch (error) {
        // The last key slot in strict custody: going on deletes the key, so ask first.
        if (error.code !== "confirm_delete_key" || !window.confirm(error.message)) throw error;
        done = await confirmed(button.dataset.confirmAction, { ...extra, delete_key: true });
      }
      window.location.assign(window.kb.safeNext(done.redirect));
    } catch (error) {
      say(status, "");
      say(alert, error && error.name === "NotAllowedError"
        ? "The passkey prompt was cancelled. Nothing was changed." : (error.message || String(error)));
      button.disabled = false;
    }
  });
})();
