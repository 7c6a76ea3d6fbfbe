// Shared by the page scripts: a same-origin JSON POST whose failures carry the server's words.
"use strict";
window.kb = {
  async post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const error = new Error(data.error || `The server answered ${response.status}.`);
      error.code = data.code;
      throw error;
    }
    return data;
  },
  // Where to go next, checked again here (the server's safe_next checked it first): the URL
  // parser resolves it against this page's origin, and anything that lands elsewhere (a
  // "//host", "/<TAB>/host", "/\\host", "javascript:" ...) falls back. Returns the parsed href,
  // so what is navigated to is exactly what was checked.
  safeNext(next, fallback = "/settings") {
    const home = new URL(fallback, location.origin).href;
    if (typeof next !== "string" || !next.startsWith("/") || /^\/[\/\\]/.test(next)) return home;
    if (/[\u0000-\u0020\u007f-\uffff]/.test(next)) return home;
    let url;
    try { url = new URL(next, location.origin); } catch (_) { return home; }
    return url.origin === location.origin ? url.href : home;
  },
};
