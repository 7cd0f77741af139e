// A JsSIP softphone the tests drive through the DevTools protocol. It
// records every SIP message the page receives over its WebSocket and every
// UA and session event, for the test to read back; the configuration (the
// WebSocket URL, the SIP URI and the local password of authproxy's client
// group) comes from the test through startPhone.
'use strict';

window.sipReceived = [];
window.events = [];
let ua = null;
let outgoing = null;
let incoming = null;
let incomingName = 'in';

function note(type, detail) {
  window.events.push({ type: type, detail: detail || '' });
}

// Keep every message read from the WebSocket before JsSIP parses it.
const origOnMessage = JsSIP.WebSocketInterface.prototype._onMessage;
JsSIP.WebSocketInterface.prototype._onMessage = function (ev) {
  window.sipReceived.push(typeof ev.data === 'string' ? ev.data : '[binary frame]');
  return origOnMessage.call(this, ev);
};

function watch(session, name) {
  ['progress', 'accepted', 'confirmed', 'ended', 'failed'].forEach(function (ev) {
    session.on(ev, function (e) {
      note(name + ':' + ev, e && e.cause ? String(e.cause) : '');
    });
  });
}

window.startPhone = function (cfg) {
  const socket = new JsSIP.WebSocketInterface(cfg.ws);
  ua = new JsSIP.UA({
    sockets: [socket],
    uri: cfg.uri,
    password: cfg.password,
    register: true,
    register_expires: 300,
    session_timers: false,
  });
  ['connected', 'disconnected', 'registered', 'unregistered'].forEach(function (ev) {
    ua.on(ev, function () { note(ev); });
  });
  ua.on('registrationFailed', function (e) { note('registrationFailed', String(e.cause)); });
  ua.on('newRTCSession', function (e) {
    if (e.originator === 'remote') {
      incoming = e.session;
      note(incomingName + ':incoming', e.request.from.uri.toString());
      watch(incoming, incomingName);
    }
  });
  ua.start();
};

// call places a call; its events are named name + ':' + event.
window.call = function (target, name) {
  outgoing = ua.call(target, {
    mediaConstraints: { audio: true, video: false },
    pcConfig: { iceServers: [] },
  });
  watch(outgoing, name);
};

// expectIncoming names the events of the next incoming call.
window.expectIncoming = function (name) {
  incomingName = name;
};

// renegotiate sends a re-INVITE in the outgoing call.
window.renegotiate = function () {
  return new Promise(function (resolve) {
    outgoing.renegotiate({}, function () { note('renegotiated'); resolve(true); });
  });
};

window.answer = function () {
  incoming.answer({ mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers: [] } });
};

// hangUp ends (or cancels) the outgoing call.
window.hangUp = function () {
  outgoing.terminate();
};

// hangUpIncoming ends the incoming call.
window.hangUpIncoming = function () {
  incoming.terminate();
};

window.stopPhone = function () {
  ua.stop();
};
