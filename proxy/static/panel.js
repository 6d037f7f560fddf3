// ToneGuard agent panel: plain JS, no build step. Everything it shows is masked by the server.
"use strict";

const LABELS = {
  "payment-card-number": "Card number",
  "expiration-date": "Expiry (MMYY)",
  "security-code": "Security code",
  "postal-code": "Postal code",
};
const state = { key: "", call: "", sid: "", socket: null };
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Authorization": `Bearer ${state.key}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

function render(payment) {
  state.sid = payment.sid || state.sid;
  $("status").textContent = `Status: ${payment.status}` +
    (payment.brand ? ` · ${payment.brand.toUpperCase()}` : "");
  $("error").textContent = payment.error ? `Error: ${payment.error}` : "";
  $("token").textContent = payment.token ? `Token: ${payment.token} (card ending ${payment.last4})` : "";
  const fields = payment.fields || payment.masked || {};
  const current = payment.current_field || payment.field || "";
  $("fields").replaceChildren(...Object.entries(fields).map(([name, value]) => {
    const row = document.createElement("div");
    row.className = "field";
    row.dataset.field = name;
    const label = document.createElement("span");
    label.textContent = LABELS[name] || name;
    const shown = document.createElement("span");
    shown.className = "value";
    shown.textContent = value || (name === current ? "(keying…)" : "");
    const again = document.createElement("button");
    again.textContent = "Re-ask";
    again.onclick = () => api("POST", `/v1/calls/${state.call}/payments/${state.sid}`,
      { Capture: name }).then(render).catch(showError);
    row.append(label, shown, again);
    return row;
  }));
}

function showError(e) { $("error").textContent = `Error: ${e.message}`; }

async function refreshCalls() {
  const calls = await api("GET", "/v1/calls");
  const list = $("calls");
  if (!calls.length) { list.innerHTML = "<li>No calls assigned to you.</li>"; return; }
  list.replaceChildren(...calls.map((c) => {
    const li = document.createElement("li");
    li.className = "call" + (c.call_id === state.call ? " selected" : "");
    li.textContent = c.call_id;
    li.dataset.call = c.call_id;
    li.onclick = () => select(c);
    return li;
  }));
}

async function select(call) {
  state.call = call.call_id;
  state.sid = call.payment_sid || "";
  $("call-label").textContent = `on ${call.call_id}`;
  $("controls").hidden = false;
  if (state.sid) render(await api("GET", `/v1/calls/${state.call}/payments/${state.sid}`));
  refreshCalls();
}

function listen() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  // The key goes as the second subprotocol (Sec-WebSocket-Protocol), never in the URL:
  // URLs end up in access logs and history. The server answers with "toneguard".
  const socket = new WebSocket(`${proto}://${location.host}/v1/events`, ["toneguard", state.key]);
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.call_id === state.call && (!state.sid || event.sid === state.sid)) render(event);
    if (event.type === "started" || event.type === "result") refreshCalls();
  };
  socket.onclose = () => setTimeout(() => state.key && listen(), 2000);
  state.socket = socket;
}

$("connect").onclick = async () => {
  state.key = $("key").value.trim();
  try {
    const me = await api("GET", "/v1/me");
    $("who").textContent = `${me.agent_id} (${me.role})`;
    await refreshCalls();
    listen();
  } catch (e) { showError(e); }
};
$("start").onclick = () => api("POST", `/v1/calls/${state.call}/payments`, {})
  .then(render).catch(showError);
$("complete").onclick = () => api("POST", `/v1/calls/${state.call}/payments/${state.sid}`,
  { Status: "complete" }).then(render).catch(showError);
$("cancel").onclick = () => api("POST", `/v1/calls/${state.call}/payments/${state.sid}`,
  { Status: "cancel" }).then(render).catch(showError);
setInterval(() => state.key && refreshCalls().catch(() => {}), 5000);
