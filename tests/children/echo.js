// Test child: wrap the socket at SOCKETPAIR_FD in net.Socket and echo until end-of-file.
'use strict';
const net = require('net');

const fd = Number(process.env.SOCKETPAIR_FD);
const socket = new net.Socket({ fd, readable: true, writable: true });
socket.on('data', (chunk) => socket.write(chunk));
socket.on('end', () => socket.end());
