// The Node.js parent of the Node IPC benchmark: the reference a Python parent over
// NodeChannel is measured against. It forks child.js with child_process.fork, the way
// a Node program starts a Node child, and prints the seconds of the measured part.
//
//   node parent.js stream json|advanced N MESSAGE_JSON  (N messages child -> parent)
//   node parent.js rtt json|advanced N MESSAGE_JSON     (N round trips after a warm-up)
'use strict';

const { fork } = require('child_process');
const path = require('path');

const [kind, serialization, count, messageJson] = process.argv.slice(2);
const n = Number(count);
const message = JSON.parse(messageJson);
const WARMUP = 50;

const child = fork(path.join(__dirname, 'child.js'), [], { serialization });
let started;

function done(received) {
  const elapsed = process.hrtime.bigint() - started;
  process.stdout.write(`${Number(elapsed) / 1e9} ${received}\n`);
  child.disconnect();
}

child.once('message', () => {  // {ready: true}
  if (kind === 'stream') {
    let received = 0;
    child.on('message', () => {
      if (++received === n) done(received);
    });
    started = process.hrtime.bigint();
    child.send({ op: 'stream', n, message });
  } else {
    let trips = -WARMUP;
    child.send({ op: 'echo' });
    child.on('message', (answer) => {
      if (++trips === 0) started = process.hrtime.bigint();
      if (trips === n) done(trips);
      else child.send(answer);
    });
    child.send(message);
  }
});
