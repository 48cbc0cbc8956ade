-- levee's latency read: Redis's clock and the enqueue time of a queue's oldest waiting job, in
-- one call, so a tick stays one round trip per node. Read-only; loaded once per node (EVALSHA).
-- KEYS[1]: the key the layout starts from. ARGV[1]: the layout; the rest depend on it.
-- Returns {seconds, microseconds, stamp, ...}: TIME, then the enqueue time of every candidate for
-- the oldest waiting job, in the layout's own encoding (no stamp: no job is waiting).
local clock = redis.call('TIME')
local reply = {clock[1], clock[2]}
local function stamp(value)
  if value then
    reply[#reply + 1] = value
  end
end
local layout = ARGV[1]
if layout == 'sidekiq' then
  -- Sidekiq pushes on the left and fetches from the right: the oldest job is the last one.
  local entry = redis.call('LINDEX', KEYS[1], -1)
  if entry then
    local ok, job = pcall(cjson.decode, entry)
    if ok and type(job) == 'table' and type(job.enqueued_at) == 'number' then
      stamp(string.format('%.17g', job.enqueued_at))
    end
  end
elseif layout == 'rq' then
  -- RQ pushes on the right and pops from the left. ARGV[2]: the job hashes' key prefix.
  local id = redis.call('LINDEX', KEYS[1], 0)
  if id then
    stamp(redis.call('HGET', ARGV[2] .. id, 'enqueued_at'))
  end
elseif layout == 'bullmq' then
  -- ARGV[2]: '<prefix>:<queue>:'. ARGV[3]: '1' to count delayed jobs from when they fell due.
  local base = ARGV[2]
  local function job(id)
    if id then
      stamp(redis.call('HGET', base .. id, 'timestamp'))
    end
  end
  -- FIFO jobs enter on the left, LIFO jobs on the right; workers take from the right. (BullMQ
  -- before v6 moved the jobs of a paused queue to the list 'paused'.)
  for _, list in ipairs({'wait', 'paused'}) do
    job(redis.call('LINDEX', base .. list, -1))
    job(redis.call('LINDEX', base .. list, 0))
  end
  -- A prioritized job's score is priority * 2^32 + an insertion counter: the first job of each
  -- priority is that priority's oldest (the first 64 priorities in use are looked at).
  local band = 4294967296
  local from = '-inf'
  for _ = 1, 64 do
    local first = redis.call('ZRANGEBYSCORE', base .. 'prioritized', from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if not first[1] then
      break
    end
    job(first[1])
    from = string.format('%.0f', (math.floor(tonumber(first[2]) / band) + 1) * band)
  end
  if ARGV[3] == '1' then
    -- A delayed job's score is the time it falls due, in milliseconds, * 4096 (+ a counter).
    local first = redis.call('ZRANGE', base .. 'delayed', 0, 0, 'WITHSCORES')
    if first[2] then
      local due = math.floor(tonumber(first[2]) / 4096)
      local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
      if due <= now then
        stamp(string.format('%.0f', due))
      end
    end
  end
elseif layout == 'stream' then
  -- ARGV[2]: the consumer group, '' for the whole stream. Entry IDs are '<milliseconds>-<seq>'.
  if redis.call('EXISTS', KEYS[1]) == 1 then
    local group = ARGV[2]
    if group == '' then
      local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
      if first[1] then
        stamp(first[1][1])
      end
    else
      local pending = redis.call('XPENDING', KEYS[1], group)
      if pending[1] > 0 then
        stamp(pending[2])
      else
        local delivered
        for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
          local fields = {}
          for i = 1, #info, 2 do
            fields[info[i]] = info[i + 1]
          end
          if fields['name'] == group then
            delivered = fields['last-delivered-id']
          end
        end
        if delivered then
          local next = redis.call('XRANGE', KEYS[1], '(' .. delivered, '+', 'COUNT', 1)
          if next[1] then
            stamp(next[1][1])
          end
        end
      end
    end
  end
else
  return redis.error_reply('levee latency: unknown layout ' .. tostring(layout))
end
return reply
