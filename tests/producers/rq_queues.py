"""Enqueues one RQ job in each queue named, then prints RQ's own list of queues as JSON.
Usage: python rq_queues.py REDIS_PORT QUEUE..."""
import json
import sys

from redis import Redis
from rq import Queue

port, names = sys.argv[1], sys.argv[2:]
connection = Redis(host="127.0.0.1", port=int(port))
for name in names:
    Queue(name, connection=connection).enqueue("os.getpid")
print(json.dumps({"queues": sorted(q.name for q in Queue.all(connection=connection))}))
