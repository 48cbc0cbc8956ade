"""Sends Celery tasks at several priorities through kombu's Redis transport, then prints kombu's
own size of the queue (which sums the priority sub-queues) as JSON.
Usage: python celery_fill.py REDIS_PORT QUEUE"""
import json
import sys

from celery import Celery

port, queue = sys.argv[1], sys.argv[2]
app = Celery(broker=f"redis://127.0.0.1:{port}/0")
app.conf.broker_transport_options = {"queue_order_strategy": "priority"}
sent = 0
for priority in (0, 3, 6, 9, 5):
    for _ in range(priority + 1):
        app.send_task("levee.noop", queue=queue, priority=priority)
        sent += 1
with app.connection() as connection:
    channel = connection.default_channel
    size = channel._size(queue)
print(json.dumps({"sent": sent, "size": size}))
