#!/usr/bin/env node
// Publish cio-gateway envelopes from Node.js with amqplib.
//
// Each envelope goes to the exchange of its type (customerio.identify / customerio.track /
// customerio.transactional), with routing key = userId (which keeps one user's messages in
// order), as a persistent JSON message on a confirm channel; the script waits for RabbitMQ's
// confirms before it exits. `mandatory` makes an unroutable message an error, not a silent drop.
//
//   npm install amqplib   (examples/node/package.json)
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//     node examples/node/publish.js track --user 42 --payload '{"name": "signup"}'
//
// Prints one JSON line per confirmed envelope. Options: --user, --anonymous-id (an anonymous
// track, page or screen), --object TYPE:ID (an object envelope; routing key object:TYPE:ID), all
// repeatable; --payload JSON, --count N (envelopes per sender), --url URL (default $AMQP_URL).
// A broadcast needs no sender: its routing key is broadcast:<payload.broadcastId>.
'use strict';

const amqp = require('amqplib');
const crypto = require('node:crypto');

const EXCHANGES = {
  identify: 'customerio.identify',
  delete: 'customerio.identify',
  suppress: 'customerio.identify',
  unsuppress: 'customerio.identify',
  addDevice: 'customerio.identify',
  deleteDevice: 'customerio.identify',
  merge: 'customerio.identify',
  object: 'customerio.identify',
  segment: 'customerio.identify',
  track: 'customerio.track',
  page: 'customerio.track',
  screen: 'customerio.track',
  transactional: 'customerio.transactional',
  broadcast: 'customerio.transactional',
};

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

// A ULID: 48 bits of milliseconds, 80 random bits, Crockford base32. As correlationId it
// becomes the Customer.io event id, so a message published twice is delivered once.
function ulid() {
  let value = (BigInt(Date.now()) << 80n) | BigInt('0x' + crypto.randomBytes(10).toString('hex'));
  let out = '';
  for (let i = 0; i < 26; i++) {
    out = CROCKFORD[Number(value & 31n)] + out;
    value >>= 5n;
  }
  return out;
}

function parseArgs(argv) {
  const args = { senders: [], payload: '{}', count: 1, url: process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f' };
  const rest = argv.slice(2);
  args.type = rest.shift();
  while (rest.length) {
    const flag = rest.shift();
    const value = rest.shift();
    if (value === undefined) throw new Error(`${flag} needs a value`);
    // [what names the subject, routing key]: one subject's messages share a key, so stay in order.
    if (flag === '--user') args.senders.push([{ userId: value }, value]);
    // A visitor not identified yet: an anonymous track, page or screen, routed by the anonymousId.
    else if (flag === '--anonymous-id') args.senders.push([{ anonymousId: value }, value]);
    else if (flag === '--object') {
      const [objectTypeId, objectId] = value.split(/:(.*)/s);
      args.senders.push([{ objectTypeId, objectId }, `object:${value}`]);
    }
    else if (flag === '--payload') args.payload = value;
    else if (flag === '--count') args.count = Number(value);
    else if (flag === '--url') args.url = value;
    else throw new Error(`unknown option ${flag}`);
  }
  if (!EXCHANGES[args.type]) throw new Error(`type must be one of ${Object.keys(EXCHANGES).join(', ')}`);
  if (args.type === 'broadcast') {
    args.senders = [[{}, `broadcast:${JSON.parse(args.payload).broadcastId}`]];
  }
  if (!args.senders.length) throw new Error('give at least one --user, --anonymous-id or --object');
  return args;
}

async function main() {
  const args = parseArgs(process.argv);
  const payload = JSON.parse(args.payload);
  const exchange = EXCHANGES[args.type];
  const connection = await amqp.connect(args.url);
  try {
    const channel = await connection.createConfirmChannel();
    let unroutable = null;
    channel.on('return', (msg) => { unroutable = msg.fields.routingKey; });
    const confirmed = [];
    for (let n = 0; n < args.count; n++) {
      for (const [names, key] of args.senders) {
        const envelope = {
          type: args.type,
          ...names,
          payload: args.type === 'identify' ? { ...payload, seq: n } : payload,
          timestamp: Date.now(),
          correlationId: ulid(),
        };
        const body = Buffer.from(JSON.stringify(envelope));
        // The callback runs when RabbitMQ confirms (err = null) or nacks this message.
        confirmed.push(new Promise((resolve, reject) => {
          channel.publish(exchange, key, body, {
            persistent: true,
            contentType: 'application/json',
            mandatory: true,
          }, (err) => (err ? reject(err) : resolve(envelope)));
        }));
      }
    }
    for (const envelope of await Promise.all(confirmed)) {
      console.log(JSON.stringify({ published: true, correlationId: envelope.correlationId, exchange }));
    }
    await channel.waitForConfirms();
    if (unroutable !== null) throw new Error(`unroutable: no queue bound for user ${unroutable}`);
    await channel.close();
  } finally {
    await connection.close();
  }
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
