// child_upper.js: a Node.js child that answers every message with it in upper case.
//
//   spawn(["node", "examples/child_upper.js"], fd=3)   (README: "Spawning a child")
//
// spawn() put our end of the socketpair at the descriptor named by SOCKETPAIR_FD (3 here).
// net.Socket takes it over as it is: already connected, so no 'connect' event comes.
// Messages use the Channel's framing: a 4-byte big-endian length, then the bytes. The
// reply upper-cases ASCII letters and leaves every other byte alone (it is binary-safe).
'use strict';
const net = require('net');

const where = process.env.SOCKETPAIR_FD;
if (where === undefined || where === 'stdio') {
  console.error('child_upper.js: start me with spawn(..., fd=N); stdio is not handled here');
  process.exit(2);
}
const socket = new net.Socket({ fd: Number(where), readable: true, writable: true });

let pending = Buffer.alloc(0);
socket.on('data', (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  // A chunk may hold part of a message or several: answer every complete one.
  while (pending.length >= 4) {
    const length = pending.readUInt32BE(0);
    if (pending.length < 4 + length) break;
    const message = pending.subarray(4, 4 + length);
    pending = pending.subarray(4 + length);
    const reply = Buffer.from(message); // a copy; upper-case ASCII letters only, like C
    for (let i = 0; i < reply.length; i++) {
      if (reply[i] >= 0x61 && reply[i] <= 0x7a) reply[i] -= 0x20;
    }
    const header = Buffer.alloc(4);
    header.writeUInt32BE(reply.length, 0);
    socket.write(Buffer.concat([header, reply]));
  }
});
// The parent closed its end: finish writing, then let the process exit.
socket.on('end', () => socket.end());
