// ToneGuard agent panel: the softphone. The agent's browser registers to Kamailio over SIP on a
// WebSocket (JsSIP, proxy/static/jssip.min.js) and answers the caller in the same page where it
// runs the payment. Media is WebRTC (DTLS-SRTP, ICE) to ToneGuard, which masks the caller's
// keys before they reach this page: nothing here ever sees a card digit.
//
// It plugs into panel.js through window.toneguard (api, refreshCalls, select) and the
// "toneguard:connected" event: the API tells it where to register (GET /v1/softphone), so the
// SIP WebSocket URL is configuration ([api] softphone_ws_url), the one origin the page's CSP
// lets it connect to besides its own.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const LABELS = {
    off: "Phone off", connecting: "Connecting…", registered: "Registered: waiting for calls",
    unregistered: "Not registered", failed: "Phone unavailable", ringing: "Incoming call",
    answering: "Answering…", "in-call": "In call",
  };
  const phone = { ua: null, session: null, remoteStream: null, state: "off", muted: false };
  window.softphone = phone;  // for a supervisor's console, and the end-to-end test's recorder

  function setState(state, detail) {
    phone.state = state;
    const el = $("sp-state");
    el.dataset.state = state;
    el.textContent = LABELS[state] + (detail ? ` (${detail})` : "");
    const session = phone.session;
    $("sp-answer").hidden = state !== "ringing";
    $("sp-hangup").hidden = !session;
    $("sp-hangup").textContent = state === "ringing" ? "Reject" : "Hang up";
    $("sp-mute").hidden = state !== "in-call";
    $("sp-mute").textContent = phone.muted ? "Unmute" : "Mute";
    $("sp-mute").setAttribute("aria-pressed", String(phone.muted));
    $("sp-peer").textContent = session ? `Caller: ${callerOf(session)}` : "";
  }

  function callerOf(session) {
    const id = session.remote_identity;
    return (id && (id.display_name || (id.uri && id.uri.user))) || "unknown";
  }

  // The call the agent is talking on is the call ToneGuard relays: Kamailio keeps the SIP
  // Call-ID, which is ToneGuard's call id. Select it in the panel, ready for a payment.
  async function selectInPanel(callId) {
    const tg = window.toneguard;
    for (let attempt = 0; attempt < 10 && phone.session; attempt++) {
      await tg.refreshCalls().catch(() => {});
      const call = tg.state.calls.get(callId);
      if (call) {
        if (tg.state.call !== callId) await tg.select(call);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  function attach(session, callId) {
    phone.session = session;
    phone.muted = false;
    const played = (stream) => {
      phone.remoteStream = stream;
      $("sp-audio").srcObject = stream;
      $("sp-audio").play().catch(() => {});  // autoplay after the Answer click is allowed
      document.dispatchEvent(new CustomEvent("toneguard:softphone-audio", { detail: stream }));
    };
    session.on("peerconnection", ({ peerconnection }) => {
      peerconnection.addEventListener("track", (e) =>
        played(e.streams[0] || new MediaStream([e.track])));
    });
    session.on("accepted", () => setState("in-call"));
    session.on("confirmed", () => {
      setState("in-call");
      selectInPanel(callId).catch(() => {});
    });
    const ended = (e) => {
      if (phone.session !== session) return;
      phone.session = null;
      phone.remoteStream = null;
      $("sp-audio").srcObject = null;
      setState(phone.ua && phone.ua.isRegistered() ? "registered" : "unregistered",
        e && e.cause && e.cause !== "Terminated" && e.cause !== "Bye" ? e.cause : "");
    };
    session.on("ended", ended);
    session.on("failed", ended);
  }

  function answer() {
    const session = phone.session;
    if (!session || phone.state !== "ringing") return;
    setState("answering");
    session.answer({
      mediaConstraints: { audio: true, video: false },
      // Kamailio routes the media through ToneGuard, an ICE-lite peer on a public address:
      // host candidates are all a browser needs; no STUN/TURN servers are contacted.
      pcConfig: { iceServers: [] },
    });
  }

  function hangup() {
    if (phone.session) phone.session.terminate();
  }

  function mute() {
    const session = phone.session;
    if (!session || phone.state !== "in-call") return;
    if (phone.muted) session.unmute({ audio: true }); else session.mute({ audio: true });
    phone.muted = !phone.muted;
    setState("in-call");
  }

  function stop() {
    if (phone.session) phone.session.terminate();
    if (phone.ua) phone.ua.stop();
    phone.ua = null;
    phone.session = null;
  }

  async function start() {
    stop();
    let config;
    try {
      config = await window.toneguard.api("GET", "/v1/softphone");
    } catch (e) {
      setState("failed", e.message);
      return;
    }
    $("softphone").hidden = !config.enabled;
    if (!config.enabled) { setState("off"); return; }
    setState("connecting");
    const ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(config.ws_url)],
      uri: config.uri,
      display_name: config.display_name,
      register: true,
      session_timers: false,
      user_agent: "ToneGuard panel (JsSIP)",
      // A credential for this agent's address only, short-lived, from the API (never the API
      // key): Kamailio checks it against the secret it shares with ToneGuard.
      ...(config.password ? {
        authorization_user: config.authorization_user, password: config.password } : {}),
    });
    phone.ua = ua;
    const mine = (handler) => (...args) => { if (phone.ua === ua) handler(...args); };
    ua.on("connecting", mine(() => setState("connecting")));
    ua.on("disconnected", mine(() => phone.session || setState("connecting", "reconnecting")));
    ua.on("registered", mine(() => phone.session || setState("registered")));
    ua.on("unregistered", mine(() => phone.session || setState("unregistered")));
    ua.on("registrationFailed", mine((e) => phone.session || setState("failed", e.cause)));
    ua.on("newRTCSession", mine(({ session, originator, request }) => {
      if (originator !== "remote") return;
      if (phone.session) {  // one call at a time: the agent is on another one
        session.terminate({ status_code: 486, reason_phrase: "Busy Here" });
        return;
      }
      attach(session, request.call_id);
      setState("ringing");
    }));
    ua.start();
  }

  $("sp-answer").onclick = answer;
  $("sp-hangup").onclick = hangup;
  $("sp-mute").onclick = mute;
  document.addEventListener("toneguard:connected", () => { start(); });
  window.addEventListener("beforeunload", stop);
})();
