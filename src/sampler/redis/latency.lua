-- levee's latency read: Redis's clock and the enqueue time of the oldest waiting job of each of
-- several queues (a node's latency queues, or in Cluster mode those of one hash slot), in one
-- call, so a tick stays one round trip per node and pays one script run for all its queues.
-- Read-only; loaded once per node (EVALSHA).
-- KEYS[i]: the key queue i's layout starts from. ARGV: per queue, its layout, then that layout's
-- arguments (sidekiq none, rq 1, bullmq 2, stream 1).
-- Returns {seconds, microseconds, then per queue: n, then n stamps}: TIME, then per queue the
-- enqueue times of the candidates for its oldest waiting job, in the layout's own encoding (n = 0:
-- no job is waiting), or in place of n the error reading that queue raised. Flat, so that a run
-- over thousands of queues builds no table per queue (the cost here is per queue: a Sidekiq queue
-- is one LINDEX and a match on the job's last bytes).
local clock = redis.call('TIME')
local reply = {clock[1], clock[2]}
local arity = {sidekiq = 0, rq = 1, bullmq = 2, stream = 1}

-- A Sidekiq job's enqueue time: Sidekiq writes enqueued_at as the job's last field, so the
-- number before the final '}' is it when that is where it stands (a nested field cannot end the
-- outermost object); otherwise the whole job is decoded.
local function sidekiq_stamp(entry)
  local _, last = string.find(entry, '"enqueued_at":', -48, true)
  local at = last and string.match(entry, '^(%-?[%d%.eE+]+)}$', last + 1)
  if at then
    return at
  end
  local ok, job = pcall(cjson.decode, entry)
  if ok and type(job) == 'table' and type(job.enqueued_at) == 'number' then
    return string.format('%.17g', job.enqueued_at)
  end
end
local function oldest(key, layout, args)
  local stamps = {}
  local function stamp(value)
    if value then
      stamps[#stamps + 1] = value
    end
  end
  if layout == 'rq' then
    -- RQ pushes on the right and pops from the left. args[1]: the job hashes' key prefix.
    local id = redis.call('LINDEX', key, 0)
    if id then
      stamp(redis.call('HGET', args[1] .. id, 'enqueued_at'))
    end
  elseif layout == 'bullmq' then
    -- args[1]: '<prefix>:<queue>:'. args[2]: '1' to count delayed jobs from when they fell due.
    local base = args[1]
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
    if args[2] == '1' then
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
    -- args[1]: the consumer group, '' for the whole stream. Entry IDs are '<milliseconds>-<seq>'.
    if redis.call('EXISTS', key) == 1 then
      local group = args[1]
      if group == '' then
        local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
        if first[1] then
          stamp(first[1][1])
        end
      else
        local pending = redis.call('XPENDING', key, group)
        if pending[1] > 0 then
          stamp(pending[2])
        else
          local delivered
          for _, info in ipairs(redis.call('XINFO', 'GROUPS', key)) do
            local fields = {}
            for i = 1, #info, 2 do
              fields[info[i]] = info[i + 1]
            end
            if fields['name'] == group then
              delivered = fields['last-delivered-id']
            end
          end
          if delivered then
            local next = redis.call('XRANGE', key, '(' .. delivered, '+', 'COUNT', 1)
            if next[1] then
              stamp(next[1][1])
            end
          end
        end
      end
    end
  else
    error('levee latency: unknown layout ' .. tostring(layout))
  end
  return stamps
end

local function add(stamps)
  reply[#reply + 1] = #stamps
  for _, value in ipairs(stamps) do
    reply[#reply + 1] = value
  end
end

local at = 1
for _, key in ipairs(KEYS) do
  local layout = ARGV[at]
  if layout == 'sidekiq' then
    at = at + 1
    -- Sidekiq pushes on the left and fetches from the right: the oldest job is the last one.
    local entry = redis.pcall('LINDEX', key, -1)
    local value = type(entry) == 'string' and sidekiq_stamp(entry)
    if value then
      reply[#reply + 1] = 1
      reply[#reply + 1] = value
    elseif type(entry) == 'table' and entry.err then
      reply[#reply + 1] = entry
    else
      reply[#reply + 1] = 0
    end
  else
    local count = arity[layout] or 0
    local args = {}
    for j = 1, count do
      args[j] = ARGV[at + j]
    end
    at = at + 1 + count
    -- One queue's error (a wrong type, a missing group) is that queue's alone.
    local ok, stamps = pcall(oldest, key, layout, args)
    if ok then
      add(stamps)
    elseif type(stamps) == 'table' and stamps.err then
      reply[#reply + 1] = stamps
    else
      reply[#reply + 1] = {err = tostring(stamps)}
    end
  end
end
return reply
