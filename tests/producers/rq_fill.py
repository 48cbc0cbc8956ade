"""Enqueues RQ jobs, then prints RQ's own queue length as JSON.
Usage: python rq_fill.py REDIS_PORT QUEUE COUNT"""
import json
import sys

from redis import Redis
from rq import Queue

port, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
queue = Queue(name, connection=Redis(host="127.0.0.1", port=int(port)))
for i in range(count):
    queue.enqueue("os.getpid")
print(json.dumps({"count": len(queue)}))
