// echo_peer.js: echo every message back (Node.js, no add-on, no dependencies).
//
//   SOCKETPAIR_FD=3 node examples/echo_peer.js     (or spawn(["node", "examples/echo_peer.js"], fd=3))
//
// An independent implementation of the channel's wire format (docs/protocol.md)
// on a SOCK_STREAM socket: each message is a 4-byte big-endian length, then that
// many bytes. Node cannot send or receive file descriptors over a socket, so this
// peer speaks plain messages only. Exits when the peer closes its end.
'use strict';
const net = require('net');

const where = process.env.SOCKETPAIR_FD;
if (where === undefined) {
  console.error('echo_peer.js: SOCKETPAIR_FD is not set');
  process.exit(2);
}
const fd = where === 'stdio' ? 0 : Number.parseInt(where, 10);
const MAX_MESSAGE = 64 * 1024 * 1024; // refuse absurd lengths instead of allocating them

const socket = new net.Socket({ fd, readable: true, writable: true });
let pending = Buffer.alloc(0);

socket.on('data', (chunk) => {
  pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
  let offset = 0;
  const replies = [];
  while (pending.length - offset >= 4) {
    const length = pending.readUInt32BE(offset);
    if (length > MAX_MESSAGE) {
      console.error(`echo_peer.js: message of ${length} bytes is too large`);
      process.exit(1);
    }
    if (pending.length - offset - 4 < length) break;
    replies.push(pending.subarray(offset, offset + 4 + length)); // header + payload, as received
    offset += 4 + length;
  }
  pending = pending.subarray(offset);
  if (replies.length && !socket.write(Buffer.concat(replies))) {
    socket.pause(); // back-pressure: stop reading until the reply is flushed
    socket.once('drain', () => socket.resume());
  }
});

socket.on('end', () => {
  if (pending.length) {
    console.error(`echo_peer.js: end-of-file inside a message (${pending.length} bytes)`);
    process.exit(1);
  }
  socket.end();
});
