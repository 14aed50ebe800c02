// node_ipc_child.js: a Node.js child that uses nothing but Node's own IPC:
// process.on('message') and process.send(). No framing code, no socket code.
//
// Node sets the channel up when it finds NODE_CHANNEL_FD=<n> in its environment:
// descriptor n must be a connected Unix stream socket (one end of a socketpair), and
// NODE_CHANNEL_SERIALIZATION_MODE says 'json' (the default) or 'advanced'. The wire
// protocol the other end speaks is described in docs/native-ipc.md.
//
// The conversation (the same as examples/node_parent.js expects of its child):
//   {op: 'upper', text}          -> {text: <text in upper case>}
//   {op: 'serve', text} + server -> {serving: <port>}; the first connection to that
//                                   listening socket gets `text`, then it is closed
//   {op: 'bye'}                  -> the child disconnects and exits
'use strict';

process.on('message', (message, handle) => {
  switch (message.op) {
    case 'upper':
      process.send({ text: String(message.text).toUpperCase() });
      break;
    case 'serve':
      // `handle` is a net.Server that is already listening: the parent's socket.
      handle.once('connection', (connection) => {
        connection.end(message.text);
        handle.close();
      });
      process.send({ serving: handle.address().port });
      break;
    case 'bye':
      process.disconnect(); // the parent sees end-of-file; nothing keeps us alive
      break;
    default:
      process.send({ error: `unknown op ${JSON.stringify(message.op)}` });
  }
});
