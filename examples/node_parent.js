// node_parent.js: a Node.js parent that talks to a child in any language over Node's
// own IPC channel: child_process.spawn() with 'ipc' in stdio, then child.send() and
// child.on('message').
//
//   node examples/node_parent.js [--advanced] <child program> [args...]
//   node examples/node_parent.js node examples/node_ipc_child.js
//
// Node creates a socketpair, puts one end at the child's descriptor 3 (the position of
// 'ipc' in stdio) and sets NODE_CHANNEL_FD=3 and NODE_CHANNEL_SERIALIZATION_MODE in the
// child's environment; a child in another language speaks the protocol described in
// docs/native-ipc.md on that descriptor. The conversation is the one
// examples/node_ipc_child.js documents: two messages, a listening TCP server handed
// over with its message, then 'bye'.
'use strict';
const { spawn } = require('child_process');
const net = require('net');

const args = process.argv.slice(2);
const serialization = args[0] === '--advanced' ? (args.shift(), 'advanced') : 'json';
if (args.length === 0) {
  console.error('usage: node node_parent.js [--advanced] <child program> [args...]');
  process.exit(2);
}

const child = spawn(args[0], args.slice(1), {
  stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
  serialization,
});

// Replies come back in order; answer each step when its reply arrives.
const steps = [
  () => child.send({ op: 'upper', text: 'hello' }),
  () => child.send({ op: 'upper', text: `over ${serialization} ipc` }),
  () => {
    // Hand the child a listening socket: it accepts, we connect.
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      // Once written, the child holds its own copy of the listening socket: close ours.
      child.send({ op: 'serve', text: 'served by the child' }, server, () => server.close());
    });
  },
];

child.on('message', (reply) => {
  console.log('parent got', JSON.stringify(reply));
  if (reply.serving) {
    const connection = net.connect(reply.serving, '127.0.0.1');
    let text = '';
    connection.on('data', (chunk) => { text += chunk; });
    connection.on('end', () => {
      console.log('parent read', JSON.stringify(text), 'from the handed-over server');
      child.send({ op: 'bye' });
    });
  } else {
    steps.shift()?.();
  }
});
child.on('exit', (code) => {
  console.log('child exited with', code);
  process.exitCode = code;
});
steps.shift()();
