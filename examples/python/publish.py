#!/usr/bin/env python3
"""Publish cio-gateway envelopes from Python with pika.

Each envelope goes to the exchange of its type (customerio.identify / customerio.track /
customerio.transactional), with routing key = userId (which keeps one user's messages in
order), as a persistent JSON message, and is confirmed by RabbitMQ (publisher confirms)
before the next one is sent. `mandatory` makes an unroutable message an error instead of
a silent drop.

    pip install 'pika>=1.3,<2'
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
      python3 examples/python/publish.py track --user 42 --payload '{"name": "signup"}'

Prints one JSON line per confirmed envelope. Several users / messages:
    python3 examples/python/publish.py track --user 1 --user 2 --count 5 --payload '{"name": "step"}'
A visitor not identified yet (track, page or screen; routing key = anonymousId):
    python3 examples/python/publish.py screen --anonymous-id anon-7 --payload '{"name": "Home"}'
An object (routing key object:<type>:<id>) and a broadcast (routing key broadcast:<id>):
    python3 examples/python/publish.py object --object 1:acme --payload '{"action": "identify"}'
    python3 examples/python/publish.py broadcast --payload '{"broadcastId": 12, "ids": ["42"]}'
"""

import argparse
import json
import os
import secrets
import sys
import time

import pika

EXCHANGES = {
    "identify": "customerio.identify",
    "delete": "customerio.identify",
    "suppress": "customerio.identify",
    "unsuppress": "customerio.identify",
    "addDevice": "customerio.identify",
    "deleteDevice": "customerio.identify",
    "merge": "customerio.identify",
    "object": "customerio.identify",
    "segment": "customerio.identify",
    "track": "customerio.track",
    "page": "customerio.track",
    "screen": "customerio.track",
    "transactional": "customerio.transactional",
    "broadcast": "customerio.transactional",
}

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid() -> str:
    """A ULID: 48 bits of milliseconds, 80 random bits, Crockford base32. As correlationId it
    becomes the Customer.io event id, so a message published twice is delivered once."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def envelope(kind: str, names: dict, payload: dict) -> dict:
    """`names` says whom it is about: userId, anonymousId, or objectTypeId and objectId."""
    return {
        "type": kind,
        **names,
        "payload": payload,
        "timestamp": int(time.time() * 1000),
        "correlationId": ulid(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("type", choices=sorted(EXCHANGES))
    parser.add_argument("--user", action="append", default=[], help="user id (repeatable)")
    parser.add_argument("--anonymous-id", action="append", default=[],
                        help="anonymous visitor instead of a user, for track, page, screen (repeatable)")
    parser.add_argument("--object", action="append", default=[],
                        help="an object envelope's TYPE_ID:OBJECT_ID (repeatable)")
    parser.add_argument("--payload", default="{}", help="the payload, as JSON")
    parser.add_argument("--count", type=int, default=1, help="envelopes per user")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    args = parser.parse_args()

    payload = json.loads(args.payload)
    # (what names the subject, routing key): a subject's messages share a key, so stay in order.
    senders = [({"userId": u}, u) for u in args.user]
    senders += [({"anonymousId": a}, a) for a in args.anonymous_id]
    for spec in args.object:
        type_id, _, object_id = spec.partition(":")
        senders.append(({"objectTypeId": type_id, "objectId": object_id}, f"object:{spec}"))
    if args.type == "broadcast":
        senders = [({}, f"broadcast:{payload.get('broadcastId')}")]
    if not senders:
        parser.error("give at least one --user, --anonymous-id or --object")
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    channel.confirm_delivery()  # basic_publish now raises unless RabbitMQ confirms
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    exchange = EXCHANGES[args.type]
    try:
        for n in range(args.count):
            for names, key in senders:
                body = envelope(args.type, names, payload)
                body["payload"] = dict(payload, seq=n) if args.type == "identify" else payload
                channel.basic_publish(
                    exchange=exchange,
                    routing_key=key,
                    body=json.dumps(body).encode(),
                    properties=properties,
                    mandatory=True,
                )
                print(json.dumps({"published": True, "correlationId": body["correlationId"],
                                  "exchange": exchange, "routingKey": key}), flush=True)
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
        print(f"not confirmed: {e}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
