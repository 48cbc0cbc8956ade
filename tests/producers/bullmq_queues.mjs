// Adds one BullMQ job to each queue named (BullMQ writes each queue's meta hash), then prints
// the names as JSON. Usage: node bullmq_queues.mjs REDIS_PORT QUEUE...
import { Queue } from 'bullmq';

const [port, ...names] = process.argv.slice(2);
const connection = { host: '127.0.0.1', port: Number(port) };
for (const name of names) {
  const queue = new Queue(name, { connection });
  await queue.add('job', { name });
  await queue.close();
}
console.log(JSON.stringify({ queues: [...names].sort() }));
process.exit(0);
