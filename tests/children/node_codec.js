// Test peer for the wire codecs: one request per stdin line, one answer per stdout line.
// A request is "<mode> <hex>"; the answer is "ok <hex>" or "error <message>".
//   v8:     hex of v8.serialize() -> v8.deserialize -> v8.serialize again
//   ipc:    a whole advanced-mode frame, read and written by Node's own IPC code
//           (internal/child_process/serialization, hence --expose-internals)
//   json:   a json-mode line -> JSON.parse -> JSON.stringify + "\n"
//   show:   hex of v8.serialize() -> util.inspect of the value (to check JS types)
//   showipc: an advanced-mode frame -> util.inspect of the value Node's IPC reads
'use strict';
const readline = require('readline');
const util = require('util');
const v8 = require('v8');
const { advanced } = require('internal/child_process/serialization');

function ipcRead(frame) {
  const channel = {};
  advanced.initMessageChannel(channel);
  const values = [...advanced.parseChannelMessages(channel, frame)];
  if (values.length !== 1 || channel.buffering) throw new Error(`${values.length} messages`);
  return values[0];
}

function ipcWrite(value) {
  let written;
  const channel = { writeBuffer(req, buffer) { written = Buffer.from(buffer); return 0; } };
  advanced.writeChannelMessage(channel, {}, value, null);
  return written;
}

const show = (value) => util.inspect(value, { depth: null, breakLength: Infinity });

const modes = {
  v8: (data) => v8.serialize(v8.deserialize(data)).toString('hex'),
  ipc: (data) => ipcWrite(ipcRead(data)).toString('hex'),
  json: (data) => Buffer.from(JSON.stringify(JSON.parse(data.toString('utf8'))) + '\n').toString('hex'),
  show: (data) => Buffer.from(show(v8.deserialize(data))).toString('hex'),
  showipc: (data) => Buffer.from(show(ipcRead(data))).toString('hex'),
};

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [mode, hex] = line.split(' ');
  let answer;
  try {
    answer = 'ok ' + modes[mode](Buffer.from(hex || '', 'hex'));
  } catch (err) {
    answer = 'error ' + String(err.message).replace(/\n/g, ' ');
  }
  process.stdout.write(answer + '\n');
});
