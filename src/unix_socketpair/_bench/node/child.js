// The Node.js child of the Node IPC benchmark. The same program serves both parents:
// a Node parent (child_process.fork, node_parent.js) and a Python parent (NodeChannel),
// so the rows differ only in the parent. It uses nothing but process.send and
// process.on('message').
//
//   {op: 'stream', n, message} -> `message` sent n times, as fast as the channel takes it
//   {op: 'echo'}               -> from then on every message is sent back as it came
'use strict';

// Messages queued per turn of the event loop while streaming: the loop must turn now
// and then so that Node writes out what process.send queued once the socket was full.
const BATCH = 1000;

let echo = false;

function stream(n, message) {
  let left = n;
  const more = () => {
    const count = Math.min(left, BATCH);
    for (let i = 0; i < count; i++) process.send(message);
    left -= count;
    if (left > 0) setImmediate(more);
  };
  more();
}

process.on('message', (message) => {
  if (echo) {
    process.send(message);
  } else if (message.op === 'stream') {
    stream(message.n, message.message);
  } else if (message.op === 'echo') {
    echo = true;
  }
});
process.send({ ready: true });
