// Unit tests for the browser SDK under node's test runner, with a fake window and popup.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";

const BROKER = "https://broker.example";
const APP = "https://app.example";
let popup;
let listeners;
let fetchCalls;
let fetchAnswer;

function install({ blocked = false } = {}) {
  listeners = new Set();
  fetchCalls = [];
  popup = blocked ? null : { closed: false, location: { href: "about:blank" }, close() { this.closed = true; } };
  globalThis.window = {
    location: { origin: APP },
    screenX: 0, screenY: 0, outerWidth: 1200, outerHeight: 900,
    open: () => popup,
    addEventListener: (type, fn) => { if (type === "message") listeners.add(fn); },
    removeEventListener: (type, fn) => { listeners.delete(fn); },
  };
  globalThis.fetch = async (url, init) => {
    fetchCalls.push({ url, body: String(init.body) });
    return { ok: fetchAnswer.ok, status: fetchAnswer.status, json: async () => fetchAnswer.body };
  };
}

const { requestOpenAIAPI, revoke, KeybrokerError } = await import("../../static/sdk/keybroker.mjs");

async function authorizeURL() {
  for (let i = 0; i < 50 && popup.location.href === "about:blank"; i++) await new Promise((r) => setTimeout(r, 5));
  return new URL(popup.location.href);
}

function post(data, { origin = BROKER, source = popup } = {}) {
  for (const fn of [...listeners]) fn({ origin, source, data });
}

beforeEach(() => {
  install();
  fetchAnswer = { ok: true, status: 200, body: { access_token: "sk-kb-x", base_url: `${BROKER}/v1`, scope: "chat", expires_in: 60 } };
});

test("opens the popup synchronously and resolves apiKey and baseURL", async () => {
  const promise = requestOpenAIAPI({ broker: BROKER, scopes: ["chat"], models: ["gpt-4o-mini"], budgetUSD: 2 });
  assert.equal(popup.location.href, "about:blank"); // opened before any await
  const url = await authorizeURL();
  assert.equal(url.origin, BROKER);
  assert.equal(url.pathname, "/authorize");
  const p = url.searchParams;
  assert.equal(p.get("client_id"), APP);
  assert.equal(p.get("response_mode"), "web_message");
  assert.equal(p.get("code_challenge_method"), "S256");
  assert.match(p.get("code_challenge"), /^[A-Za-z0-9_-]{43}$/);
  assert.equal(p.get("models"), "gpt-4o-mini");
  assert.equal(p.get("budget"), "2");
  post({ type: "authorization_response", code: "c0de", state: p.get("state"), iss: BROKER });
  const access = await promise;
  assert.deepEqual(access, { apiKey: "sk-kb-x", baseURL: `${BROKER}/v1`, scope: "chat", expiresIn: 60 });
  assert.equal(fetchCalls[0].url, `${BROKER}/oauth/token`);
  const body = new URLSearchParams(fetchCalls[0].body);
  assert.equal(body.get("code"), "c0de");
  assert.equal(body.get("client_id"), APP);
  assert.ok(body.get("code_verifier").length >= 43);
});

test("a blocked popup rejects with popup_blocked", async () => {
  install({ blocked: true });
  await assert.rejects(requestOpenAIAPI({ broker: BROKER }), (e) => e instanceof KeybrokerError && e.code === "popup_blocked");
});

test("a closed popup rejects with popup_closed", async () => {
  const promise = requestOpenAIAPI({ broker: BROKER });
  await authorizeURL();
  popup.closed = true;
  await assert.rejects(promise, (e) => e.code === "popup_closed");
});

test("deny rejects with access_denied", async () => {
  const promise = requestOpenAIAPI({ broker: BROKER });
  const state = (await authorizeURL()).searchParams.get("state");
  post({ type: "authorization_response", error: "access_denied", state, iss: BROKER });
  await assert.rejects(promise, (e) => e.code === "access_denied");
  assert.ok(popup.closed);
});

test("messages from another origin, window or state are ignored", async () => {
  const promise = requestOpenAIAPI({ broker: BROKER, timeoutMs: 300 });
  const state = (await authorizeURL()).searchParams.get("state");
  post({ type: "authorization_response", code: "evil", state, iss: BROKER }, { origin: "https://evil.example" });
  post({ type: "authorization_response", code: "evil", state, iss: BROKER }, { source: {} });
  post({ type: "authorization_response", code: "evil", state: "wrong", iss: BROKER });
  post({ type: "something_else", code: "evil", state });
  await assert.rejects(promise, (e) => e.code === "timeout");
  assert.equal(fetchCalls.length, 0);
});

test("another issuer is a mix-up and rejects with invalid_response", async () => {
  const promise = requestOpenAIAPI({ broker: BROKER });
  const state = (await authorizeURL()).searchParams.get("state");
  post({ type: "authorization_response", code: "c", state, iss: "https://other.example" });
  await assert.rejects(promise, (e) => e.code === "invalid_response");
});

for (const iss of [undefined, null, "", 42, `${BROKER}/`, BROKER.toUpperCase()]) {
  test(`a response with iss ${JSON.stringify(iss)} is refused, before any token exchange`, async () => {
    const promise = requestOpenAIAPI({ broker: BROKER });
    const state = (await authorizeURL()).searchParams.get("state");
    const message = { type: "authorization_response", code: "c", state };
    if (iss !== undefined) message.iss = iss;
    post(message);
    await assert.rejects(promise, (e) => e.code === "invalid_response" && /this broker/.test(e.message));
    assert.equal(fetchCalls.length, 0);
  });
}

test("a failed token exchange rejects with invalid_response", async () => {
  fetchAnswer = { ok: false, status: 400, body: { error: "invalid_grant" } };
  const promise = requestOpenAIAPI({ broker: BROKER });
  const state = (await authorizeURL()).searchParams.get("state");
  post({ type: "authorization_response", code: "c", state, iss: BROKER });
  await assert.rejects(promise, (e) => e.code === "invalid_response" && /invalid_grant/.test(e.message));
});

test("revoke posts the token to the revocation endpoint", async () => {
  fetchAnswer = { ok: true, status: 200, body: {} };
  await revoke("sk-kb-x", { broker: BROKER });
  assert.equal(fetchCalls[0].url, `${BROKER}/oauth/revoke`);
  assert.equal(new URLSearchParams(fetchCalls[0].body).get("token"), "sk-kb-x");
});
