// Fills a BullMQ queue with jobs in every state levee counts, using BullMQ itself, then prints
// BullMQ's own counts as JSON. Usage: node bullmq_fill.mjs REDIS_PORT QUEUE PREFIX [paused]
// With "paused", the queue is paused before the waiting jobs are added.
import { Queue, Worker } from 'bullmq';

const [port, name, prefix, mode] = process.argv.slice(2);
const connection = { host: '127.0.0.1', port: Number(port) };
const queue = new Queue(name, { connection, prefix });

// Two jobs become active and stay there: the worker never finishes them.
const worker = new Worker(name, () => new Promise(() => {}), { connection, prefix, concurrency: 2 });
for (let i = 0; i < 2; i++) await queue.add('held', { i });
for (let attempt = 0; attempt < 100; attempt++) {
  if ((await queue.getJobCounts('active')).active === 2) break;
  await new Promise((resolve) => setTimeout(resolve, 50));
}
await worker.pause(true);
if (mode === 'paused') await queue.pause();

for (let i = 0; i < 7; i++) await queue.add('plain', { i });
for (let i = 0; i < 3; i++) await queue.add('urgent', { i }, { priority: 1 + i });
for (let i = 0; i < 4; i++) await queue.add('later', { i }, { delay: 3_600_000 });

const counts = await queue.getJobCounts('wait', 'paused', 'prioritized', 'active', 'delayed');
console.log(JSON.stringify(counts));
process.exit(0);
