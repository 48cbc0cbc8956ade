"""Enqueues RQ jobs (the oldest 2 s before the others), then prints as JSON the oldest job's
enqueued_at as RQ itself reads it back (seconds since the epoch) and RQ's queue length.
Usage: python rq_latency.py REDIS_PORT QUEUE"""
import json
import sys
import time

from redis import Redis
from rq import Queue
from rq.job import Job

port, name = sys.argv[1], sys.argv[2]
connection = Redis(host="127.0.0.1", port=int(port))
queue = Queue(name, connection=connection)
first = queue.enqueue("os.getpid")
time.sleep(2)
for _ in range(3):
    queue.enqueue("os.getpid")
oldest = Job.fetch(queue.job_ids[0], connection=connection)
assert oldest.id == first.id
print(json.dumps({"enqueuedAt": oldest.enqueued_at.timestamp(), "count": len(queue)}))
