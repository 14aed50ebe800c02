// A test child for `unix-socketpair exec --frames`: wraps fd 3 in net.Socket, reads
// messages in the stream framing (4-byte big-endian length, then the payload) and answers
// each with its ASCII letters upper-cased. Ends its side when the parent ends its own.
const net = require('net');

const sock = new net.Socket({ fd: 3, readable: true, writable: true });
let pending = Buffer.alloc(0);
sock.on('data', (data) => {
  pending = Buffer.concat([pending, data]);
  while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
    const end = 4 + pending.readUInt32BE(0);
    const reply = Buffer.from(pending.subarray(4, end).toString('latin1').toUpperCase(), 'latin1');
    pending = pending.subarray(end);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(reply.length);
    sock.write(Buffer.concat([header, reply]));
  }
});
sock.on('end', () => sock.end());
