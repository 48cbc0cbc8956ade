// Adds BullMQ jobs with BullMQ itself: a prioritized job first, a plain job 1.5 s later, then
// prints as JSON the oldest waiting job's `timestamp` as BullMQ reads it back, and its counts.
// With "paused", the queue is paused first. Usage: node bullmq_latency.mjs REDIS_PORT QUEUE [paused]
import { Queue, Job } from 'bullmq';

const [port, name, mode] = process.argv.slice(2);
const connection = { host: '127.0.0.1', port: Number(port) };
const queue = new Queue(name, { connection });
if (mode === 'paused') await queue.pause();
const oldest = await queue.add('urgent', { i: 0 }, { priority: 3 });
await new Promise((resolve) => setTimeout(resolve, 1500));
await queue.add('plain', { i: 1 });
await queue.add('later', { i: 2 }, { delay: 3_600_000 });
const read = await Job.fromId(queue, oldest.id);
const counts = await queue.getJobCounts('wait', 'paused', 'prioritized', 'delayed');
console.log(JSON.stringify({ timestamp: read.timestamp, counts }));
process.exit(0);
