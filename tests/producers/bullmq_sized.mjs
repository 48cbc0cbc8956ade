// Adds COUNT jobs whose data holds BYTES bytes to a BullMQ queue, using BullMQ itself, then
// prints BullMQ's own counts as JSON. Usage: node bullmq_sized.mjs REDIS_PORT QUEUE COUNT BYTES
import { Queue } from 'bullmq';

const [port, name, count, bytes] = process.argv.slice(2);
const connection = { host: '127.0.0.1', port: Number(port) };
const queue = new Queue(name, { connection });
const payload = 'x'.repeat(Number(bytes));
for (let added = 0; added < Number(count); added += 500) {
  const batch = Array.from({ length: Math.min(500, Number(count) - added) }, (_, i) => ({
    name: 'job',
    data: { i: added + i, payload },
  }));
  await queue.addBulk(batch);
}
console.log(JSON.stringify(await queue.getJobCounts('wait')));
process.exit(0);
