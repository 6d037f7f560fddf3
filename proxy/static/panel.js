// ToneGuard agent panel: plain JS, no build step. Everything it shows is masked by the server:
// the page never holds a card digit.
//
// Other scripts (e.g. softphone.js) plug in through window.toneguard: its `api` helper,
// `refreshCalls()` and `select(call)` (a call from GET /v1/calls), and the
// document events "toneguard:connected" (detail: {key, me}) and "toneguard:call-selected"
// (detail: the call from GET /v1/calls).
"use strict";

(() => {
  const LABELS = {
    "payment-card-number": "Card number",
    "expiration-date": "Expiry (MMYY)",
    "security-code": "Security code",
    "postal-code": "Postal code",
  };
  // What the agent asks the caller for while a field is being keyed.
  const ASK = {
    "payment-card-number": "Ask the caller to key the long number on the front of the card, then #.",
    "expiration-date": "Ask for the expiry date: month and year as 4 digits (MMYY), then #.",
    "security-code": "Ask for the security code: 3 digits on the back (Amex: 4 on the front), then #.",
    "postal-code": "Ask for the digits of the billing postal code, then #.",
  };
  const OPEN = new Set(["capturing", "ready", "submitting", "failed-submit"]);
  const SUBMITTABLE = new Set(["ready", "failed-submit"]);
  const RETRY_MS = 2000;

  const state = {
    key: "", me: null, calls: new Map(), call: "", payment: null, socket: null, retry: null,
  };
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: { "Authorization": `Bearer ${state.key}`, "Content-Type": "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof data.detail === "string" ? data.detail : response.statusText;
      throw new ApiError(response.status, detail);
    }
    return data;
  }

  // --- errors: the key's problems by the key, the payment's in the payment box -------------

  function showError(e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 429)) {
      $("conn-error").textContent = e.status === 401
        ? "API key refused: check it, or ask your supervisor for a new one."
        : `Too many attempts: ${e.message}`;
    } else {
      $("error").textContent = `Error: ${e.message}`;
    }
  }

  // --- the payment box -----------------------------------------------------------------------

  function fromEvent(event) {
    const keep = state.payment && state.payment.sid === event.sid ? state.payment : {};
    return {
      ...keep, sid: event.sid, call_id: event.call_id, status: event.status,
      current_field: event.field, fields: event.masked, brand: event.brand,
      error: event.error, token: event.token, last4: event.last4,
    };
  }

  function promptFor(payment) {
    if (!state.key) return "Connect with your API key.";
    if (!state.call) return "Select a call.";
    if (!payment) return "When the caller is ready to pay, enter the amount and start a secure payment.";
    switch (payment.status) {
      case "capturing":
        return (payment.error ? "That entry was not accepted. " : "") +
          (ASK[payment.current_field] || "Ask the caller to key the card details.");
      case "ready":
      case "submitting":
        return "All details keyed: the payment is being authorised. Ask the caller to hold.";
      case "failed-submit":
        return "The payment gateway did not answer: press Submit to try again " +
          "(the caller does not key again).";
      case "complete":
        return `Payment taken: read the caller the card ending ${payment.last4} ` +
          "and the payment reference.";
      case "failed":
        return "The payment did not go through: tell the caller, and start a new one if they " +
          "want to try another card.";
      case "cancelled":
        return "Payment cancelled. Start a new one if the caller wants to pay.";
      default:
        return "";
    }
  }

  function fieldRow(payment, name, value) {
    const row = document.createElement("div");
    row.className = "field" + (name === payment.current_field && payment.status === "capturing"
      ? " current" : "");
    row.dataset.field = name;
    const label = document.createElement("span");
    label.textContent = LABELS[name] || name;
    const shown = document.createElement("span");
    shown.className = "value";
    shown.textContent = value || (name === payment.current_field && payment.status === "capturing"
      ? "(keying…)" : "");
    row.append(label, shown);
    if (payment.status === "capturing") {
      const again = document.createElement("button");
      again.textContent = "Re-ask";
      again.onclick = () => api("POST", `/v1/calls/${encodeURIComponent(payment.call_id)}` +
        `/payments/${payment.sid}`, { Capture: name }).then(render).catch(showError);
      row.append(again);
    }
    return row;
  }

  function render(payment) {
    state.payment = payment || null;
    const p = state.payment;
    const open = p && OPEN.has(p.status);
    $("start-form").hidden = !state.call || !state.calls.has(state.call) || Boolean(open);
    $("complete").hidden = !(p && SUBMITTABLE.has(p.status));
    $("cancel").hidden = !open;
    $("prompt").textContent = promptFor(p);
    if (!p) {
      for (const id of ["status", "error", "token"]) $(id).textContent = "";
      $("fields").replaceChildren();
      return;
    }
    const amount = p.amount ? ` · ${p.amount} ${p.currency || ""}`.trimEnd() : "";
    $("status").textContent = `Status: ${p.status}` +
      (p.brand ? ` · ${p.brand.toUpperCase()}` : "") + amount;
    $("error").textContent = p.error ? `Error: ${p.error}` : "";
    $("token").textContent = p.token ? `Token: ${p.token} (card ending ${p.last4})` : "";
    $("fields").replaceChildren(
      ...Object.entries(p.fields || {}).map(([name, value]) => fieldRow(p, name, value)));
  }

  // --- calls ---------------------------------------------------------------------------------

  function duration(startedAt) {
    const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(startedAt)) / 1000));
    const h = Math.floor(seconds / 3600);
    const m = Math.floor(seconds / 60) % 60;
    const s = String(seconds % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }

  function callLabel(call) {
    return call.caller || "Unknown caller";
  }

  function callItem(call) {
    const li = document.createElement("li");
    li.className = "call" + (call.call_id === state.call ? " selected" : "");
    li.dataset.call = call.call_id;
    li.title = `Call-ID ${call.call_id}`;
    const who = document.createElement("span");
    who.className = "caller";
    who.textContent = callLabel(call);
    const took = document.createElement("span");
    took.className = "duration";
    took.dataset.startedAt = call.started_at || "";
    took.textContent = call.started_at ? duration(call.started_at) : "";
    const started = document.createElement("span");
    started.className = "started";
    started.textContent = call.started_at
      ? `since ${new Date(call.started_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`
      : "";
    const paying = document.createElement("span");
    paying.className = "paying";
    paying.textContent = call.payment_sid ? "payment in progress" : "";
    li.append(who, took, started, paying);
    li.onclick = () => select(call).catch(showError);
    return li;
  }

  async function refreshCalls() {
    const calls = await api("GET", "/v1/calls");
    state.calls = new Map(calls.map((c) => [c.call_id, c]));
    const list = $("calls");
    if (!calls.length) {
      const empty = document.createElement("li");
      empty.textContent = "No calls assigned to you.";
      list.replaceChildren(empty);
    } else {
      list.replaceChildren(...calls.map(callItem));
    }
    if (state.call && !state.calls.has(state.call)) {
      // The call ended: its payment (and token) stay on screen until another call is chosen.
      $("call-label").textContent = `(call ended)`;
    }
    render(state.payment);
  }

  function tick() {
    for (const span of document.querySelectorAll("li.call .duration")) {
      if (span.dataset.startedAt) span.textContent = duration(span.dataset.startedAt);
    }
  }

  async function select(call) {
    state.call = call.call_id;
    $("call-label").textContent = `with ${callLabel(call)}`;
    $("error").textContent = "";
    const sid = call.payment_sid || call.last_payment_sid;
    render(null);
    if (sid) {
      render(await api("GET", `/v1/calls/${encodeURIComponent(call.call_id)}/payments/${sid}`));
    }
    document.dispatchEvent(new CustomEvent("toneguard:call-selected", { detail: call }));
    await refreshCalls();
  }

  // --- live updates --------------------------------------------------------------------------

  function setLive(live) {
    const el = $("live");
    el.dataset.state = live;
    el.textContent = live;
  }

  function listen() {
    clearTimeout(state.retry);
    const proto = location.protocol === "https:" ? "wss" : "ws";
    // The key goes as the second subprotocol (Sec-WebSocket-Protocol), never in the URL:
    // URLs end up in access logs and history. The server answers with "toneguard".
    setLive("connecting");
    const socket = new WebSocket(`${proto}://${location.host}/v1/events`, ["toneguard", state.key]);
    socket.onopen = () => setLive("live");
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.call_id === state.call &&
          (event.type === "started" || !state.payment || event.sid === state.payment.sid)) {
        render(fromEvent(event));
      }
      if (["started", "result", "ended"].includes(event.type)) refreshCalls().catch(showError);
    };
    socket.onclose = (closed) => {
      if (state.socket !== socket) return;  // replaced by a reconnect with another key
      setLive("offline");
      if (closed.code === 4401) {
        $("conn-error").textContent = "Live updates refused: the API key is no longer valid.";
        return;
      }
      state.retry = setTimeout(() => state.key && listen(), RETRY_MS);
    };
    if (state.socket) state.socket.close();
    state.socket = socket;
  }

  async function connect() {
    state.key = $("key").value.trim();
    $("conn-error").textContent = "";
    try {
      state.me = await api("GET", "/v1/me");
    } catch (e) {
      // Whatever went wrong with the key is said by the key, never in the payment box.
      state.key = "";
      $("who").textContent = "";
      $("conn-error").textContent = e instanceof ApiError && e.status === 429
        ? `Too many attempts: ${e.message}`
        : e instanceof ApiError ? "API key refused: check it, or ask your supervisor for a new one."
          : `Cannot reach ToneGuard: ${e.message}`;
      render(state.payment);
      return;
    }
    $("who").textContent = `${state.me.agent_id} (${state.me.role})`;
    await refreshCalls().catch(showError);
    listen();
    document.dispatchEvent(new CustomEvent("toneguard:connected",
      { detail: { key: state.key, me: state.me } }));
  }

  function startPayment() {
    const amount = $("amount").value.trim();
    if (amount && !/^\d+(\.\d{1,2})?$/.test(amount)) {
      $("error").textContent = "Error: the amount must look like 12.50";
      return;
    }
    $("error").textContent = "";
    const body = amount ? { amount, currency: $("currency").value } : {};
    api("POST", `/v1/calls/${encodeURIComponent(state.call)}/payments`, body)
      .then((payment) => { $("amount").value = ""; render(payment); }).catch(showError);
  }

  function update(body) {
    const p = state.payment;
    api("POST", `/v1/calls/${encodeURIComponent(p.call_id)}/payments/${p.sid}`, body)
      .then(render).catch(showError);
  }

  $("connect").onclick = () => connect();
  $("key").addEventListener("keydown", (e) => { if (e.key === "Enter") connect(); });
  $("start").onclick = startPayment;
  $("complete").onclick = () => update({ Status: "complete" });
  $("cancel").onclick = () => update({ Status: "cancel" });
  setInterval(tick, 1000);
  setInterval(() => state.key && refreshCalls().catch(() => {}), 5000);

  window.toneguard = { api, state, refreshCalls, select };
})();
