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
};
