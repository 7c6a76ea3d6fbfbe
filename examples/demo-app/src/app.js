// The example third-party app: it asks keybroker for access in a popup, then talks to the
// OpenAI API with the official openai SDK through the broker, streaming the answer.
import OpenAI from "openai";

const root = document.querySelector("main");
const broker = root.dataset.broker;
const $ = (id) => document.getElementById(id);
let access = null;

function say(text) { $("status").textContent = text; }

$("signin").addEventListener("click", () => {
  // Synchronously in the click handler, so the popup is not blocked.
  window.keybrokerResult = Keybroker.requestOpenAIAPI({
    broker, scopes: ["chat", "models"], models: ["gpt-4o-mini"], budgetUSD: 2, rpm: 30,
  }).then((granted) => {
    access = granted;
    window.keybrokerAccess = granted;
    say(`Signed in. This app holds a keybroker key (${granted.apiKey.slice(0, 12)}…), never your OpenAI key.`);
    $("chat").hidden = false;
    $("signin").hidden = true;
    return granted;
  }, (error) => {
    window.keybrokerError = error.code || String(error);
    say(`Sign-in did not complete: ${error.code || ""} ${error.message}`);
  });
});

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = $("answer");
  answer.textContent = "";
  const client = new OpenAI({ apiKey: access.apiKey, baseURL: access.baseURL, dangerouslyAllowBrowser: true });
  try {
    const stream = await client.chat.completions.create({
      model: "gpt-4o-mini", stream: true,
      messages: [{ role: "user", content: $("message").value }],
    });
    let chunks = 0;
    for await (const chunk of stream) {
      answer.textContent += chunk.choices[0]?.delta?.content ?? "";
      chunks += 1;
      answer.dataset.chunks = String(chunks);
    }
    answer.dataset.done = "true";
  } catch (error) {
    answer.textContent = `Error: ${error.status || ""} ${error.message}`;
    answer.dataset.done = "error";
  }
});

$("signout").addEventListener("click", async () => {
  await Keybroker.revoke(access.apiKey, { broker });
  access = null;
  $("chat").hidden = true;
  $("signin").hidden = false;
  say("Signed out: the key this app held is revoked.");
});
