// Test child that speaks only Node's own IPC: process.on('message') and process.send(),
// started with NODE_CHANNEL_FD (and NODE_CHANNEL_SERIALIZATION_MODE) by the Python side.
'use strict';
const dgram = require('dgram');
const net = require('net');
const util = require('util');

const show = (value) => util.inspect(value, { depth: null, breakLength: Infinity });
let server = null;  // a server Python sent us, or one we sent
let resolvePeer;  // our end of a connection whose other end we sent
const peer = new Promise((resolve) => { resolvePeer = resolve; });

process.on('message', (msg, handle) => {
  if (handle) return gotHandle(msg, handle);
  switch (msg.op) {
    case 'echo': return process.send(msg.value);
    case 'show': return process.send(show(msg.value));
    case 'buffer': return process.send(Buffer.from(msg.text));
    case 'count': for (let i = 0; i < msg.n; i++) process.send(i); return;
    case 'serve': return serve();
    case 'close-server': return server.close(() => process.send({ closed: true }));
    case 'connect': return connect(msg.op);
    case 'hold': return connect(msg.op);
    case 'write': return peer.then((c) => c.end(msg.text));
    case 'bye': return process.disconnect();
  }
});

function gotHandle(msg, handle) {
  const kind = handle.constructor.name;
  if (handle instanceof net.Server) {
    server = handle;
    handle.once('connection', (c) => { c.end(msg.text); handle.close(); });
    process.send({ kind, listening: handle.listening, text: msg.text });
  } else if (handle instanceof net.Socket) {
    handle.end(msg.text, () => process.send({ kind, text: msg.text }));
  } else if (handle instanceof dgram.Socket) {
    handle.send(msg.text, msg.port, '127.0.0.1', () => {
      handle.close();
      process.send({ kind, type: handle.type, text: msg.text });
    });
  }
}

// Send a listening server; Python takes it over once it has told us to close ours.
function serve() {
  server = net.createServer((c) => c.end('accepted by node'));
  server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }, server));
}

// Send one end of a TCP connection; the other end writes when Python asks ('write').
// 'hold': then send a plain message at once, and report on stdout how many messages
// Node holds back until Python answers the handle.
function connect(op) {
  const listener = net.createServer((c) => { resolvePeer(c); listener.close(); });
  listener.listen(0, '127.0.0.1', () => {
    const client = net.connect(listener.address().port, '127.0.0.1', () => {
      process.send({ kind: 'client' }, client);
      if (op === 'hold') {
        process.send('after');
        console.log(JSON.stringify({ queued: process._handleQueue ? process._handleQueue.length : 0 }));
      }
    });
  });
}
