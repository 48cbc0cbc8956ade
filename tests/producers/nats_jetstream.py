"""JetStream work made and read with nats-py, NATS's own Python client, for levee's tests.

    nats_jetstream.py URL fill STREAM SUBJECT CONSUMER PUBLISH FETCH ACK [--token T]
        creates the stream and a durable pull consumer (explicit acks, 10 min ack wait),
        publishes PUBLISH messages, fetches FETCH of them and acknowledges ACK of those
    nats_jetstream.py URL info STREAM CONSUMER [--token T]

The last line printed is the consumer's info as nats-py reads it (CONSUMER.INFO):
{"num_pending": ..., "num_ack_pending": ..., "leader": ...}.
"""

import asyncio
import json
import sys

import nats
from nats.js.api import AckPolicy, ConsumerConfig


async def main(argv):
    token = None
    if "--token" in argv:
        at = argv.index("--token")
        token = argv[at + 1]
        del argv[at : at + 2]
    url, command = argv[0], argv[1]
    nc = await nats.connect(url, token=token, connect_timeout=5, max_reconnect_attempts=0)
    js = nc.jetstream()
    if command == "fill":
        stream, subject, consumer = argv[2], argv[3], argv[4]
        publish, fetch, ack = int(argv[5]), int(argv[6]), int(argv[7])
        await js.add_stream(name=stream, subjects=[subject])
        await js.add_consumer(
            stream,
            ConsumerConfig(durable_name=consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=600),
        )
        for i in range(publish):
            await js.publish(subject, f"job-{i}".encode())
        if fetch:
            subscription = await js.pull_subscribe_bind(consumer, stream)
            fetched = []
            while len(fetched) < fetch:
                fetched += await subscription.fetch(fetch - len(fetched), timeout=5)
            for message in fetched[:ack]:
                await message.ack_sync()
    else:
        stream, consumer = argv[2], argv[3]
    info = await js.consumer_info(stream, consumer)
    leader = info.cluster.leader if info.cluster else None
    print(
        json.dumps(
            {"num_pending": info.num_pending, "num_ack_pending": info.num_ack_pending, "leader": leader}
        )
    )
    await nc.close()


asyncio.run(main(sys.argv[1:]))
