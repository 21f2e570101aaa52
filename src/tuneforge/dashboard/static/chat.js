// tuneforge dashboard, chat tab: streamed answers, each rated or corrected through POST /v1/feedback.
import { $, api, authHeaders, errorText, fill, h } from "/dashboard/static/common.js";

let history = [];
let controller = null;
let preferredModel = null;  // set by a finished job's link: the chat opens on that model

export function preferModel(id) { preferredModel = id; }

// The newest fine-tune first: an ft: model (newest created), else an adapter, else the base model.
export function pickModel(models, preferred) {
  if (preferred && models.some((m) => m.id === preferred)) return preferred;
  const tuned = models.filter((m) => m.id.startsWith("ft:")).sort((a, b) => (b.created || 0) - (a.created || 0));
  if (tuned.length) return tuned[0].id;
  const adapters = models.filter((m) => m.parent);
  return (adapters.length ? adapters[adapters.length - 1] : models[0])?.id;
}

export async function showChat() {
  const models = (await api("/v1/models")).data;
  const chosen = $("chat-model").value && models.some((m) => m.id === $("chat-model").value) && !preferredModel ? $("chat-model").value : pickModel(models, preferredModel);
  preferredModel = null;
  fill($("chat-model"), ...models.map((m) => new Option(m.parent ? `${m.id} (adapter)` : m.id, m.id)));
  $("chat-model").value = chosen;
  $("chat-input").focus();
}

function bubble(cls, text) {
  const div = h("div", { class: `msg ${cls}` }, text);
  $("chat-log").append(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div;
}

async function sendFeedback(requestId, rating, correction, status) {
  try {
    await api("/v1/feedback", { json: { request_id: requestId, rating, ...(correction ? { correction } : {}) } });
    status.textContent = correction ? "correction saved" : "rating saved";
    status.className = "saved";
  } catch (error) { status.textContent = error.message; status.className = "worse"; }
}

function feedbackControls(requestId, meta) {
  const status = h("span", {});
  const up = h("button", { type: "button", class: "rate", title: "a good answer", "data-rating": "1" }, "▲ good");
  const down = h("button", { type: "button", class: "rate", title: "a bad answer", "data-rating": "-1" }, "▼ bad");
  const fix = h("button", { type: "button", class: "rate", title: "type the answer that would have been right" }, "✎ correct");
  const rate = (button, rating) => { up.classList.toggle("chosen", button === up); down.classList.toggle("chosen", button === down);
                                     sendFeedback(requestId, rating, null, status); };
  up.addEventListener("click", () => rate(up, 1));
  down.addEventListener("click", () => rate(down, -1));
  fix.addEventListener("click", () => {
    if (meta.parentNode.querySelector(".correction")) return;
    const text = h("textarea", { placeholder: "the answer that would have been right" });
    const save = h("button", { type: "button", class: "small primary" }, "Save correction");
    save.addEventListener("click", () => { if (text.value.trim()) { down.classList.add("chosen"); up.classList.remove("chosen");
                                                                   sendFeedback(requestId, -1, text.value.trim(), status); } });
    meta.parentNode.append(h("div", { class: "correction" }, text, save));
    text.focus();
  });
  meta.append(up, down, fix, status);
}

export async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const reply = bubble("assistant", "");
  const body_ = h("span", {});
  reply.append(body_);
  const messages = ($("chat-system").value ? [{ role: "system", content: $("chat-system").value }] : []).concat(history);
  const body = { model: $("chat-model").value, messages, stream: true, stream_options: { include_usage: true },
                 temperature: Number($("chat-temperature").value), max_tokens: Number($("chat-max").value) };
  controller = new AbortController();
  $("chat-send").textContent = "Stop";
  const started = performance.now();
  let content = "", usage = null, requestId = null;
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
                                                           body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) throw new Error(await errorText(response));
    requestId = response.headers.get("X-Request-Id");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]" || !data.trim()) continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        requestId = requestId || chunk.id;
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta.content) { content += choice.delta.content; body_.textContent = content; }
        }
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      }
    }
    history.push({ role: "assistant", content });
    const seconds = (performance.now() - started) / 1000;
    const meta = h("div", { class: "meta" }, `${body.model} · ` + (usage ? `${usage.completion_tokens} tokens in ${seconds.toFixed(1)} s` : `${seconds.toFixed(1)} s`));
    reply.append(meta);
    if (requestId) feedbackControls(requestId, meta);
  } catch (error) {
    if (error.name === "AbortError") history.push({ role: "assistant", content });
    else { reply.className = "msg error"; reply.textContent = content + "\n" + error.message; history.pop(); }
  } finally {
    controller = null;
    $("chat-send").textContent = "Send";
  }
}

export function wireChat() {
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (controller) { controller.abort(); return; }
    const text = $("chat-input").value.trim();
    if (!text) return;
    $("chat-input").value = "";
    send(text);
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("chat-reset").addEventListener("click", () => { history = []; fill($("chat-log")); });
}
