// The key form: saving (or replacing) the OpenAI key needs a fresh passkey assertion, so that
// a stolen session cookie cannot swap in a key of the thief's. The assertion travels in the
// form's hidden fields; the form itself is still posted, and the server renders the result.
"use strict";
(() => {
  const form = document.querySelector("form[data-confirm-key]");
  if (!form) return;
  const say = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    say("key-error", "");
    if (!window.PublicKeyCredential || !PublicKeyCredential.parseRequestOptionsFromJSON) {
      say("key-error", "This browser does not support passkeys. Use a current Chrome, Edge, Safari or Firefox.");
      return;
    }
    button.disabled = true;
    try {
      const start = await window.kb.post("/auth/confirm/options");
      const credential = await navigator.credentials.get({
        publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(start.publicKey) });
      form.elements.ceremony.value = start.ceremony;
      form.elements.credential.value = JSON.stringify(credential.toJSON());
      form.submit();  // no submit event: this handler does not run again
    } catch (error) {
      say("key-error", error && error.name === "NotAllowedError"
        ? "The passkey prompt was cancelled. Nothing was saved." : (error.message || String(error)));
      button.disabled = false;
    }
  });
})();
