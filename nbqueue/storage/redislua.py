"""The Lua scripts of the Redis store: each contract operation that touches more
than one key is one script, so it is atomic on the server (Redis runs a script
alone). ``KEYS[1]`` is the queue's key prefix, ``nbqueue:{<name>}:``; every key a
script touches starts with it (one hash slot). Times and leases arrive as
strings computed in Python (``repr`` of a float), never formatted by Lua, whose
``tostring`` keeps only 14 digits.

Keys under the prefix:

- ``t:<id>``: the task, a hash of ``records`` fields (bulky ones too, read with
  HMGET only when asked); ``seq``: the submit counter;
- ``all`` and ``s:<state>`` and ``n:<state>:<name>``: sorted sets by seq (pages,
  names); ``ids``: every id at score 0 (prefix lookup); ``counts``: a hash;
- ``ready``: pending tasks by ``-priority * 2^32 + qseq`` (a recovered task's
  qseq is ``seq - 2^31``: ahead of its priority); ``etas``: waiting tasks by eta;
  ``running``: claims by lease end; ``fin:<state>``: finished ones by
  finished_at; ``exp``: tasks with an expiry, by it;
- ``jobs``, ``lock``, ``workers`` and ``w:<worker>`` (``redisjobs``);
- channels ``events:w`` (work is ready: how many), ``events:d`` (a task someone
  waits on finished: its id; ``waited`` counts the waiters per id), ``events:e``
  (an eta moved), ``events:c`` (a running task was asked to cancel): hints
  (``redisconn.Events``).
"""

PRELUDE = r"""
local K = KEYS[1]
local FINISHED = {succeeded = true, failed = true, cancelled = true}
local BAND = 4294967296    -- 2^32: one priority's band of ready scores
local HALF = 2147483648    -- 2^31: how far ahead of its band a recovered task sits
local RECORD = {%(fields)s}

local function tkey(id) return K .. 't:' .. id end

-- Wake-ups (hints): ``w`` with how many became ready, ``e``, ``c``; ``d`` with the
-- id, and only for a task someone waits on (``waited``, see WAIT_ON).
local function publish(kind, data) redis.call('PUBLISH', K .. 'events:' .. kind, data or '') end
-- Schedulers sleep until the earliest eta: wake them only for an earlier one.
local function earliest_eta()
  local top = redis.call('ZRANGE', K .. 'etas', 0, 0, 'WITHSCORES')
  return top[2] and tonumber(top[2])
end

local function wait_for(id, eta, was)
  redis.call('ZADD', K .. 'etas', eta, id)
  if not was or tonumber(eta) < was then
    publish('e')
    return 1
  end
  return 0
end

local function done(id)
  if redis.call('HDEL', K .. 'waited', id) == 1 then publish('d', id) end
end

-- The state indexes and counters follow a move from ``old`` to ``new`` (the
-- caller writes the status field); ``move`` writes it too.
local function reindex(id, name, seq, old, new)
  redis.call('ZREM', K .. 's:' .. old, id)
  redis.call('ZADD', K .. 's:' .. new, seq, id)
  redis.call('ZREM', K .. 'n:' .. old .. ':' .. name, id)
  redis.call('ZADD', K .. 'n:' .. new .. ':' .. name, seq, id)
  redis.call('HINCRBY', K .. 'counts', old, -1)
  redis.call('HINCRBY', K .. 'counts', new, 1)
end

local function move(id, name, seq, old, new)
  reindex(id, name, seq, old, new)
  redis.call('HSET', tkey(id), 'status', new)
end

local function make_ready(id, priority, qseq)
  redis.call('ZADD', K .. 'ready', string.format('%%.0f', -tonumber(priority or 0) * BAND + qseq), id)
end

-- A task whose expiry passed while it was unfinished is dropped by the next
-- retention once it finishes (``EXPIRE`` set it aside in ``exp-later``).
local function finished_at(id, status, now)
  redis.call('ZADD', K .. 'fin:' .. status, now, id)
  if redis.call('SREM', K .. 'exp-later', id) == 1 then redis.call('ZADD', K .. 'exp', 0, id) end
  done(id)
end

local function ended(id, status, now)
  redis.call('HSET', tkey(id), 'finished_at', now)
  finished_at(id, status, now)
end

-- A task leaves its queue (ready, etas or running) and ends cancelled.
local function cancel_now(id, name, seq, old, now, message)
  redis.call('ZREM', K .. 'ready', id)
  redis.call('ZREM', K .. 'etas', id)
  redis.call('ZREM', K .. 'running', id)
  move(id, name, seq, old, 'cancelled')
  redis.call('HSET', tkey(id), 'message', message)
  ended(id, 'cancelled', now)
end

-- Pipeline: after ``id`` finished, promote the next step with its value, or
-- cancel every later step. Returns how many became pending (0 or 1).
local function after_finish(id, now)
  local p = redis.call('HMGET', tkey(id), 'next_id', 'status', 'name')
  local child = p[1]
  if not child then return 0 end
  if p[2] == 'succeeded' then
    local c = redis.call('HMGET', tkey(child), 'status', 'name', 'seq', 'priority')
    if c[1] ~= 'scheduled' then return 0 end
    local value = redis.call('HGET', tkey(id), 'result')
    if value then redis.call('HSET', tkey(child), 'prev', value) end
    redis.call('HSET', tkey(child), 'has_prev', '1')
    redis.call('HDEL', tkey(child), 'eta')
    redis.call('ZREM', K .. 'etas', child)
    move(child, c[2], c[3], 'scheduled', 'pending')
    make_ready(child, c[4], tonumber(c[3]))
    return 1
  end
  local why = 'an earlier pipeline step (' .. p[3] .. ' ' .. id .. ') ' .. p[2]
  while child do
    local c = redis.call('HMGET', tkey(child), 'status', 'name', 'seq', 'next_id')
    if not c[1] or FINISHED[c[1]] then break end
    cancel_now(child, c[2], c[3], c[1], now, why)
    child = c[4]
  end
  return 0
end

-- Take the next ready task for ``worker``; a task past its expiry is cancelled
-- on the way. Returns its RECORD fields as they are now, or {}.
local function claim(worker, lease_until, now)
  while true do
    local id = redis.call('ZPOPMIN', K .. 'ready')[1]
    if not id then return {} end
    local r = redis.call('HMGET', tkey(id), unpack(RECORD))
    if r[%(status)d] == 'pending' then
      local name, seq, expires = r[%(name)d], r[%(seq)d], r[%(expires_at)d]
      if expires and tonumber(expires) <= tonumber(now) then
        cancel_now(id, name, seq, 'pending', now, 'expired before it started')
        after_finish(id, now)
      else
        local attempts = tostring(tonumber(r[%(attempts)d] or '0') + 1)
        reindex(id, name, seq, 'pending', 'running')
        redis.call('HSET', tkey(id), 'status', 'running', 'attempts', attempts, 'started_at', now,
                   'worker', worker, 'lease_until', lease_until)
        redis.call('ZADD', K .. 'running', lease_until, id)
        r[%(status)d], r[%(attempts)d], r[%(started_at)d] = 'running', attempts, now
        r[%(worker)d], r[%(lease_until)d] = worker, lease_until
        return r
      end
    end
  end
end

-- Takes out of sorted set ``name`` at most ``most`` members scored up to ``now``
-- (one ZREM for all of them); returns them.
local function take_due(name, now, most)
  local ids = redis.call('ZRANGEBYSCORE', K .. name, '-inf', now, 'LIMIT', 0, tonumber(most))
  if #ids > 0 then redis.call('ZREM', K .. name, unpack(ids)) end
  return ids
end

local function drop(id)
  local t = redis.call('HMGET', tkey(id), 'status', 'name', 'seq')
  if not t[1] then return 0 end
  redis.call('DEL', tkey(id))
  for _, k in ipairs({'all', 'ids', 'ready', 'etas', 'running', 'exp', 's:' .. t[1],
                      'n:' .. t[1] .. ':' .. t[2], 'fin:' .. t[1]}) do
    redis.call('ZREM', K .. k, id)
  end
  redis.call('HINCRBY', K .. 'counts', t[1], -1)
  redis.call('HDEL', K .. 'waited', id)
  redis.call('SREM', K .. 'exp-later', id)
  return 1
end
"""

# ARGV: batch ('' or the token of a CHECK_NEW before it in the same MULTI), n,
# then per record: id, name, status, priority, eta ('' none), expires_at ('' none),
# number of field/value pairs, the pairs. Returns {first seq, 1 if the earliest
# eta moved}, {} if the batch was refused, or an error reply naming an id already
# stored (nothing stored then).
ADD = r"""
if ARGV[1] ~= '' and redis.call('EXISTS', K .. 'refused:' .. ARGV[1]) == 1 then return {} end
local n = tonumber(ARGV[2])
local i, recs, seen = 3, {}, {}
for r = 1, n do
  local rec = {id = ARGV[i], name = ARGV[i + 1], status = ARGV[i + 2], priority = ARGV[i + 3],
               eta = ARGV[i + 4], expires = ARGV[i + 5], first = i + 7, count = tonumber(ARGV[i + 6])}
  if seen[rec.id] or redis.call('EXISTS', tkey(rec.id)) == 1 then
    return redis.error_reply('DUPLICATE ' .. rec.id)
  end
  seen[rec.id] = true
  recs[r] = rec
  i = rec.first + 2 * rec.count
end
local first = redis.call('INCRBY', K .. 'seq', n) - n + 1
local ready, earliest, moved = 0, earliest_eta(), 0
for r, rec in ipairs(recs) do
  local seq, key = first + r - 1, tkey(rec.id)
  local fields = {'seq', seq, 'id', rec.id, 'name', rec.name, 'status', rec.status}
  for j = rec.first, rec.first + 2 * rec.count - 1 do fields[#fields + 1] = ARGV[j] end
  redis.call('HSET', key, unpack(fields))
  redis.call('ZADD', K .. 'all', seq, rec.id)
  redis.call('ZADD', K .. 'ids', 0, rec.id)
  redis.call('ZADD', K .. 's:' .. rec.status, seq, rec.id)
  redis.call('ZADD', K .. 'n:' .. rec.status .. ':' .. rec.name, seq, rec.id)
  redis.call('HINCRBY', K .. 'counts', rec.status, 1)
  if rec.expires ~= '' then redis.call('ZADD', K .. 'exp', rec.expires, rec.id) end
  if rec.status == 'pending' then
    make_ready(rec.id, rec.priority, seq)
    ready = ready + 1
  elseif rec.eta ~= '' then
    moved = math.max(moved, wait_for(rec.id, rec.eta, earliest))
    earliest = math.min(earliest or tonumber(rec.eta), tonumber(rec.eta))
  end
end
if ready > 0 then publish('w', ready) end
return {first, moved}
"""

# A batch too big for one script is added by several ADDs in one MULTI/EXEC,
# after this check (so no script holds the server for long, and the batch is
# still all or none). ARGV: token, ids. Returns the first id already stored
# (and marks the batch refused for the ADDs after it), or nil.
CHECK_NEW = r"""
for i = 2, #ARGV do
  if redis.call('EXISTS', tkey(ARGV[i])) == 1 then
    redis.call('SET', K .. 'refused:' .. ARGV[1], 1, 'EX', 60)
    return ARGV[i]
  end
end
return nil
"""

# ARGV: token. Ends a batch of CHECK_NEW and ADDs.
END_BATCH = r"""
redis.call('DEL', K .. 'refused:' .. ARGV[1])
return 0
"""

# ARGV: worker, lease_until, now. Returns the claimed record's RECORD fields, or {}.
CLAIM = r"""
return claim(ARGV[1], ARGV[2], ARGV[3])
"""

# ARGV: id, worker, status, now, lease_until ('' : claim nothing), number of
# field/value pairs (the new status and finished_at among them), the pairs,
# number of fields to delete (worker and lease_until among them), their names.
# Returns {1 or 0 (finished), RECORD fields of the next claim...}.
FINISH = r"""
local id, worker, status, now, lease_until = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = tkey(id)
local t = redis.call('HMGET', key, 'status', 'worker', 'name', 'seq', 'priority', 'next_id')
local finished = 0
if t[1] == 'running' and t[2] == worker then
  finished = 1
  local count = tonumber(ARGV[6])
  redis.call('HSET', key, unpack(ARGV, 7, 6 + 2 * count))
  local d = 7 + 2 * count
  redis.call('HDEL', key, unpack(ARGV, d + 1, d + tonumber(ARGV[d])))
  redis.call('ZREM', K .. 'running', id)
  reindex(id, t[3], t[4], 'running', status)
  if FINISHED[status] then
    finished_at(id, status, now)
    if t[6] and after_finish(id, now) > 0 then publish('w', 1) end
  elseif status == 'retrying' then
    wait_for(id, redis.call('HGET', key, 'eta'), earliest_eta())
  else
    redis.call('HDEL', key, 'eta')
    make_ready(id, t[5], tonumber(t[4]))
    publish('w', 1)
  end
end
local nxt = {}
if lease_until ~= '' then nxt = claim(worker, lease_until, now) end
return {finished, unpack(nxt)}
"""

# ARGV: id. Counts one more waiter on the task unless it has finished (a finish
# then publishes ``d<id>``). Returns its status, or nil if there is no such task.
WAIT_ON = r"""
local status = redis.call('HGET', tkey(ARGV[1]), 'status')
if status and not FINISHED[status] then redis.call('HINCRBY', K .. 'waited', ARGV[1], 1) end
return status
"""

# ARGV: id. One waiter fewer (a finish may have cleared them all already).
UNWAIT = r"""
if redis.call('HINCRBY', K .. 'waited', ARGV[1], -1) <= 0 then redis.call('HDEL', K .. 'waited', ARGV[1]) end
return 0
"""

# ARGV: worker, lease_until, ids... Returns {id, cancel_requested, ...} of the
# claims the worker still holds.
RENEW = r"""
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local t = redis.call('HMGET', tkey(id), 'status', 'worker', 'cancel_requested')
  if t[1] == 'running' and t[2] == ARGV[1] then
    redis.call('HSET', tkey(id), 'lease_until', ARGV[2])
    redis.call('ZADD', K .. 'running', ARGV[2], id)
    out[#out + 1] = id
    out[#out + 1] = t[3] or '0'
  end
end
return out
"""

# ARGV: now, then per lapsed claim: id, worker seen, recoveries seen, action
# ('keep' | 'requeue' | 'lost'), its argument (the new lease end, the message,
# or the error JSON), and for 'lost' the message. A claim that moved since it
# was read is left alone. Returns the ids requeued or failed.
REQUEUE = r"""
local now, handled, i = ARGV[1], {}, 2
while i <= #ARGV do
  local id, worker, recoveries, action, arg = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local message = ARGV[i + 5]
  i = i + 6
  local key = tkey(id)
  local t = redis.call('HMGET', key, 'status', 'worker', 'lease_until', 'recoveries', 'name', 'seq', 'priority')
  if t[1] == 'running' and t[2] == worker and tonumber(t[3]) < tonumber(now)
      and (t[4] or '0') == recoveries then
    if action == 'keep' then
      redis.call('HSET', key, 'lease_until', arg)
      redis.call('ZADD', K .. 'running', arg, id)
    else
      handled[#handled + 1] = id
      redis.call('HDEL', key, 'worker', 'lease_until')
      redis.call('ZREM', K .. 'running', id)
      redis.call('HSET', key, 'message', message)
      if action == 'requeue' then
        redis.call('HINCRBY', key, 'recoveries', 1)
        move(id, t[5], t[6], 'running', 'pending')
        make_ready(id, t[7], tonumber(t[6]) - HALF)
        publish('w', 1)
      else
        redis.call('HSET', key, 'error', arg)
        move(id, t[5], t[6], 'running', 'failed')
        ended(id, 'failed', now)
        after_finish(id, now)
      end
    end
  end
end
return handled
"""

# ARGV: now, most. Returns how many waiting tasks became pending.
PROMOTE = r"""
local due = take_due('etas', ARGV[1], ARGV[2])
local moved = 0
for _, id in ipairs(due) do
  local t = redis.call('HMGET', tkey(id), 'status', 'name', 'seq', 'priority')
  if t[1] == 'scheduled' or t[1] == 'retrying' then
    redis.call('HDEL', tkey(id), 'eta')
    move(id, t[2], t[3], t[1], 'pending')
    make_ready(id, t[4], tonumber(t[3]))
    moved = moved + 1
  end
end
if moved > 0 then publish('w', moved) end
return {moved, #due}
"""

# ARGV: id, message, now. Returns -1 (no such task), 0 (already finished),
# 1 (cancelled), 2 (running: flagged).
CANCEL = r"""
local id = ARGV[1]
local t = redis.call('HMGET', tkey(id), 'status', 'name', 'seq')
if not t[1] then return -1 end
if FINISHED[t[1]] then return 0 end
if t[1] == 'running' then
  redis.call('HSET', tkey(id), 'cancel_requested', '1')
  publish('c')
  return 2
end
cancel_now(id, t[2], t[3], t[1], ARGV[3], ARGV[2])
after_finish(id, ARGV[3])
return 1
"""

# ARGV: id, number of field/value pairs, the pairs, fields to delete. Returns
# the cancel flag, or nil if the task is not running (nothing written then).
UPDATE = r"""
local t = redis.call('HMGET', tkey(ARGV[1]), 'status', 'cancel_requested')
if t[1] ~= 'running' then return nil end
local last = 2 + 2 * tonumber(ARGV[2])
if last > 2 then redis.call('HSET', tkey(ARGV[1]), unpack(ARGV, 3, last)) end
if #ARGV > last then redis.call('HDEL', tkey(ARGV[1]), unpack(ARGV, last + 1)) end
return t[2] or '0'
"""

# ARGV: cutoff ('+inf': any age; '(x': strictly before x), most, states...
# Drops at most ``most`` finished records of those states that finished by the
# cutoff. Returns how many.
PURGE = r"""
local most, dropped = tonumber(ARGV[2]), 0
for i = 3, #ARGV do
  if dropped >= most then break end
  local ids = redis.call('ZRANGEBYSCORE', K .. 'fin:' .. ARGV[i], '-inf', ARGV[1], 'LIMIT', 0, most - dropped)
  for _, id in ipairs(ids) do dropped = dropped + drop(id) end
end
return dropped
"""

# ARGV: excess (finished records beyond max_finished), most. Drops the oldest
# finished. Returns how many.
TRIM_OLDEST = r"""
local excess, dropped = tonumber(ARGV[1]), 0
while dropped < excess and dropped < tonumber(ARGV[2]) do
  local best, best_at = nil, nil
  for _, s in ipairs({'succeeded', 'failed', 'cancelled'}) do
    local top = redis.call('ZRANGE', K .. 'fin:' .. s, 0, 0, 'WITHSCORES')
    if top[1] and (not best_at or tonumber(top[2]) < best_at) then
      best, best_at = top[1], tonumber(top[2])
    end
  end
  if not best then break end
  dropped = dropped + drop(best)
end
return dropped
"""

# ARGV: now, most. Drops finished records whose expiry has passed; unfinished
# ones are set aside (``exp-later``) until they finish. Returns {how many it
# dropped, how many it looked at} (so a caller knows whether to go on).
EXPIRE = r"""
local ids = take_due('exp', ARGV[1], ARGV[2])
local dropped = 0
for _, id in ipairs(ids) do
  local status = redis.call('HGET', tkey(id), 'status')
  if status and FINISHED[status] then
    dropped = dropped + drop(id)
  elseif status then
    redis.call('SADD', K .. 'exp-later', id)
  end
end
return {dropped, #ids}
"""

# ARGV: name, keep, most. Drops the finished runs of ``name`` beyond its
# ``keep`` newest (by seq). Returns how many.
TRIM_RUNS = r"""
local name, keep, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local runs = {}
for _, s in ipairs({'succeeded', 'failed', 'cancelled'}) do
  local got = redis.call('ZREVRANGE', K .. 'n:' .. s .. ':' .. name, 0, keep + most - 1, 'WITHSCORES')
  for j = 1, #got, 2 do runs[#runs + 1] = {got[j], tonumber(got[j + 1])} end
end
table.sort(runs, function(a, b) return a[2] > b[2] end)
local dropped = 0
for j = keep + 1, math.min(#runs, keep + most) do dropped = dropped + drop(runs[j][1]) end
return dropped
"""

# ARGV: holder, until, now. Returns 1 if ``holder`` holds the lock now.
HOLD_LOCK = r"""
local t = redis.call('HMGET', K .. 'lock', 'holder', 'until')
if t[1] and t[1] ~= ARGV[1] and tonumber(t[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', K .. 'lock', 'holder', ARGV[1], 'until', ARGV[2])
return 1
"""

RELEASE_LOCK = r"""
if redis.call('HGET', K .. 'lock', 'holder') == ARGV[1] then redis.call('DEL', K .. 'lock') end
return 0
"""

# ARGV: worker, field/value pairs. Returns 0 if the worker is not registered.
UPDATE_WORKER = r"""
if redis.call('SISMEMBER', K .. 'workers', ARGV[1]) == 0 then return 0 end
redis.call('HSET', K .. 'w:' .. ARGV[1], unpack(ARGV, 2))
return 1
"""

SCRIPTS = {name: body for name, body in globals().items()
           if name.isupper() and name != "PRELUDE" and isinstance(body, str)}


def sources(fields):
    """``{name: Lua source}`` of every script, the prelude filled with the
    record's field names (the order ``claim`` returns them in) and the place of
    each in that list."""
    prelude = PRELUDE % {"fields": ", ".join(f"'{f}'" for f in fields),
                         **{f: i + 1 for i, f in enumerate(fields)}}
    return {name: prelude + body for name, body in SCRIPTS.items()}
