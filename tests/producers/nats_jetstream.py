"""JetStream work made and read with nats-py, NATS's own Python client, for levee's tests.

    nats_jetstream.py URL fill STREAM SUBJECT CONSUMER PUBLISH FETCH ACK [--token T]
        creates the stream and a durable pull consumer (explicit acks, 10 min ack wait),
        publishes PUBLISH messages, fetches FETCH of them and acknowledges ACK of those
    nats_jetstream.py URL fill-many STREAM SUBJECT CONSUMERS PUBLISH
        creates the stream on SUBJECT.> and durable pull consumers c-0 .. c-(CONSUMERS-1), c-i filtered on
        SUBJECT.i, and publishes PUBLISH messages on each SUBJECT.i; prints {"consumers": CONSUMERS}
    nats_jetstream.py URL info STREAM CONSUMER [--token T]
    nats_jetstream.py URL stepdown STREAM CONSUMER
        asks the consumer's leader to step down and waits (10 s at most) for another to lead it
Options: --token T (the server's token), --nkey FILE (a user nkey seed), --creds FILE (a .creds
file), --ca FILE (TLS, verifying the server with this CA), --replicas N (the stream's replicas, for a cluster),
--filter SUBJ (the consumer's filter subject), --publish-to SUBJ (where fill publishes; default
SUBJECT), --spacing S (seconds between publishes).

The last line printed is the consumer's info as nats-py reads it (CONSUMER.INFO):
{"num_pending": ..., "num_ack_pending": ..., "leader": ...}; fill adds "published", the wall-clock
time each message was published at (seconds since the epoch, in order).
"""

import asyncio
import json
import ssl
import sys
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig


async def main(argv):
    options = {}
    for name in ("--token", "--nkey", "--creds", "--ca", "--replicas", "--filter", "--publish-to", "--spacing"):
        if name in argv:
            at = argv.index(name)
            options[name] = argv[at + 1]
            del argv[at : at + 2]
    token = options.get("--token")
    replicas = int(options.get("--replicas", "1"))
    spacing = float(options.get("--spacing", "0"))
    published = []
    url, command = argv[0], argv[1]
    tls = None
    if "--ca" in options:
        tls = ssl.create_default_context(cafile=options["--ca"])
    nc = await nats.connect(
        url,
        token=token,
        tls=tls,
        nkeys_seed=options.get("--nkey"),
        user_credentials=options.get("--creds"),
        connect_timeout=5,
        max_reconnect_attempts=0,
    )
    js = nc.jetstream()
    if command == "fill":
        stream, subject, consumer = argv[2], argv[3], argv[4]
        publish, fetch, ack = int(argv[5]), int(argv[6]), int(argv[7])
        await js.add_stream(name=stream, subjects=[subject], num_replicas=replicas)
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=consumer,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=600,
                filter_subject=options.get("--filter"),
            ),
        )
        for i in range(publish):
            if i and spacing:
                await asyncio.sleep(spacing)
            published.append(time.time())
            await js.publish(options.get("--publish-to", subject), f"job-{i}".encode())
        if fetch:
            subscription = await js.pull_subscribe_bind(consumer, stream)
            fetched = []
            while len(fetched) < fetch:
                fetched += await subscription.fetch(fetch - len(fetched), timeout=5)
            for message in fetched[:ack]:
                await message.ack_sync()
    elif command == "fill-many":
        stream, subject, consumers, publish = argv[2], argv[3], int(argv[4]), int(argv[5])
        await js.add_stream(name=stream, subjects=[f"{subject}.>"], num_replicas=replicas)
        for c in range(consumers):
            await js.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=f"c-{c}",
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=600,
                    filter_subject=f"{subject}.{c}",
                ),
            )
            for i in range(publish):
                await js.publish(f"{subject}.{c}", f"job-{i}".encode())
        print(json.dumps({"consumers": consumers}))
        await nc.close()
        return
    elif command == "stepdown":
        stream, consumer = argv[2], argv[3]
        before = (await js.consumer_info(stream, consumer)).cluster.leader
        await nc.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}", b"", timeout=5)
        for _ in range(100):
            await asyncio.sleep(0.1)
            try:
                leader = (await js.consumer_info(stream, consumer, timeout=1)).cluster.leader
            except Exception:
                continue
            if leader and leader != before:
                break
    else:
        stream, consumer = argv[2], argv[3]
    info = await js.consumer_info(stream, consumer)
    leader = info.cluster.leader if info.cluster else None
    print(
        json.dumps(
            {
                "num_pending": info.num_pending,
                "num_ack_pending": info.num_ack_pending,
                "leader": leader,
                "published": published,
            }
        )
    )
    await nc.close()


asyncio.run(main(sys.argv[1:]))
