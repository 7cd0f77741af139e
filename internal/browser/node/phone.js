// The softphone of page/phone.js run by Node instead of a browser: JsSIP
// over the npm "ws" WebSocket, with a stand-in RTCPeerConnection that
// offers and answers a fixed WebRTC-shaped SDP and accepts any (no media
// flows). It reads one JSON command a line on stdin
// ({"fn": "call", "args": ["sip:2001@pbx-b.example.com", "out"], "id": "c1"}),
// prints "DONE <id>" once it returned (its promise resolved) or
// "ERROR <id> <error>", and each event page/phone.js records as a line
// "EVENT {json}".
'use strict';

const path = require('path');
const readline = require('readline');

global.window = global;
global.WebSocket = require('ws');
global.JsSIP = require('jssip');

let sdpVersion = 0;
function fakeSDP(setup) {
  sdpVersion++;
  return ['v=0', 'o=- 4242 ' + sdpVersion + ' IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=group:BUNDLE 0',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'c=IN IP4 0.0.0.0', 'a=mid:0', 'a=rtcp-mux',
    'a=ice-ufrag:node', 'a=ice-pwd:nodenodenodenodenodenode',
    'a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99',
    'a=setup:' + setup, 'a=sendrecv', 'a=rtpmap:111 opus/48000/2', ''].join('\r\n');
}

// FakePeerConnection has what JsSIP's RTCSession uses of an
// RTCPeerConnection; ICE gathering is always complete.
class FakePeerConnection extends EventTarget {
  constructor() {
    super();
    this.iceGatheringState = 'complete';
    this.iceConnectionState = 'new';
    this.signalingState = 'stable';
    this.localDescription = null;
    this.remoteDescription = null;
    this.senders = [];
  }
  createOffer() { return Promise.resolve({ type: 'offer', sdp: fakeSDP('actpass') }); }
  createAnswer() { return Promise.resolve({ type: 'answer', sdp: fakeSDP('active') }); }
  setLocalDescription(d) {
    this.localDescription = d;
    this.signalingState = d.type === 'offer' ? 'have-local-offer' : 'stable';
    return Promise.resolve();
  }
  setRemoteDescription(d) {
    this.remoteDescription = d;
    this.signalingState = d.type === 'offer' ? 'have-remote-offer' : 'stable';
    return Promise.resolve();
  }
  addTrack(track) { const s = { track: track }; this.senders.push(s); return s; }
  getSenders() { return this.senders; }
  close() { this.signalingState = 'closed'; }
}
global.RTCPeerConnection = FakePeerConnection;
global.RTCSessionDescription = function (d) { return d; };
const fakeStream = { getTracks: () => [], getAudioTracks: () => [], getVideoTracks: () => [] };
global.navigator = { mediaDevices: { getUserMedia: () => Promise.resolve(fakeStream) } };

require(path.join(__dirname, '..', 'page', 'phone.js'));

const push = Array.prototype.push;
window.events.push = function (e) {
  process.stdout.write('EVENT ' + JSON.stringify(e) + '\n');
  return push.call(this, e);
};

// printReceived prints each SIP message received as "RECEIVED <json>".
window.printReceived = function () {
  window.sipReceived.forEach(function (m) {
    process.stdout.write('RECEIVED ' + JSON.stringify(m) + '\n');
  });
};

readline.createInterface({ input: process.stdin }).on('line', function (line) {
  let cmd = {};
  const fail = function (err) {
    process.stdout.write('ERROR ' + cmd.id + ' ' + String((err && err.stack) || err).replace(/\n/g, ' | ') + '\n');
  };
  try {
    cmd = JSON.parse(line);
    Promise.resolve(window[cmd.fn].apply(null, cmd.args || [])).then(function () {
      process.stdout.write('DONE ' + cmd.id + '\n');
    }, fail);
  } catch (err) {
    fail(err);
  }
});
process.stdin.on('end', function () { process.exit(0); });
