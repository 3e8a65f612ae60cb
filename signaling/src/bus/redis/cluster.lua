-- Icebreaker's cluster state in Redis, one script so that every step that must be atomic
-- across nodes is (Redis runs a script to the end before anything else). ARGV[1] names
-- the operation; docs/scaling.md describes the keys.
--
-- ib:peer:{P}       hash  room, node, token, seq (last seq handed out), bytes (of its outbox)
-- ib:peer:{P}:q     list of P's messages not yet acknowledged, oldest first, two elements
--                   each: seq, message JSON. A list, not a stream: Redis 7 gives every new
--                   stream a 4 KiB node up front (4.7 KB for one message, against 192 B
--                   for a list), and a list that acks empty is deleted, where an empty
--                   stream stays (~400 B per idle peer).
-- ib:room:{R}       hash  peer id -> meta JSON ('' for none)
-- ib:node:{N}:peers set   peers node N holds
-- ib:node:{N}:alive string with a TTL, refreshed by node N
-- ib:dead:{N}       string: when a survivor first saw node N dead (ms)
-- ib:nodes          set   every node that registered
-- channel ib:node:{N}  records "P SEQ T LEN JSON" back to back (a message for P; LEN is
--                       the byte length of JSON), or "P 0 0 8 takeover"; one PUBLISH per
--                       node per script run carries every record for that node

local op = ARGV[1]
local NOW_US = ARGV[2]      -- sender's clock, µs since the epoch (forward latency)
local LIMIT = tonumber(ARGV[3])  -- outbox entries per peer
local BYTES = tonumber(ARGV[4])  -- outbox bytes per peer
local TTL = tonumber(ARGV[5])    -- outbox expiry, ms

local function pk(p) return 'ib:peer:' .. p end

-- How many elements of outbox q (two per message) hold seqs up to s: seqs ascend, so that
-- is a prefix. They are consecutive too (one RPUSH per seq), so one LINDEX finds its end;
-- a node that wrote its own outbox back after a Redis restart may leave a hole, and then
-- the prefix is counted.
local function prefix_upto(q, s)
  local first = tonumber(redis.call('LINDEX', q, 0))
  if not first or s < first then return 0 end
  local i = 2 * (s - first)
  if tonumber(redis.call('LINDEX', q, i)) == s then return i + 2 end
  if tonumber(redis.call('LINDEX', q, -2)) <= s then return redis.call('LLEN', q) end
  local all = redis.call('LRANGE', q, 0, -1)
  local n = 0
  for j = 1, #all, 2 do
    if tonumber(all[j]) > s then break end
    n = j + 1
  end
  return n
end

-- Records to publish, per node, sent together when the run ends (see `flush`): a batch
-- of signals for one node is one PUBLISH and one wake-up there, not one per signal.
local PUBS = {}
local function publish(node, p, seq, msg)
  local t = PUBS[node]
  if not t then
    t = {}
    PUBS[node] = t
  end
  -- Header and message as separate parts: Redis's Lua hashes every byte of every new
  -- string, so the message is not copied into a record string before the final concat.
  t[#t + 1] = p .. ' ' .. seq .. ' ' .. NOW_US .. ' ' .. #msg .. ' '
  t[#t + 1] = msg
end
local function flush()
  for node, t in pairs(PUBS) do
    redis.call('PUBLISH', 'ib:node:' .. node, table.concat(t))
  end
end

-- Hands `body` (a message without its seq and closing brace) to peer p, if p is in
-- `room` (nil: anywhere): the next seq, kept in p's outbox list, published to p's node.
-- Returns the seq, or -1: no such peer (in that room).
local function deliver(p, body, room)
  local k = pk(p)
  local f = redis.call('HMGET', k, 'node', 'room')
  local node = f[1]
  if not node or (room and f[2] ~= room) then return -1 end
  local seq = redis.call('HINCRBY', k, 'seq', 1)
  local full = body .. ',"seq":' .. seq .. '}'
  local q = k .. ':q'
  local n = redis.call('RPUSH', q, seq, full) / 2
  local bytes
  if n == 1 then
    -- A new list (or one emptied by acks): an expired one took its bytes with it. Its
    -- expiry is set here and pushed back by each ack, not by each message (a call per
    -- signal saved): a peer that stops acking stops mattering within the TTL, which is
    -- over twice the resume grace.
    redis.call('HSET', k, 'bytes', #full)
    redis.call('PEXPIRE', q, TTL)
    bytes = #full
  else
    bytes = redis.call('HINCRBY', k, 'bytes', #full)
  end
  -- Bounded in entries and bytes: the oldest go first (a resume that needs them fails);
  -- the newest always stays.
  while n > 1 and (n > LIMIT or bytes > BYTES) do
    local old = redis.call('LPOP', q, 2)
    n = n - 1
    bytes = redis.call('HINCRBY', k, 'bytes', -#old[2])
  end
  publish(node, p, seq, full)
  return seq
end

-- Removes peer p (if it is still there and, when `only_node` is given, still held by that
-- node) and tells the rest of its room `peer-left` with `reason`. Returns 1 if removed.
local function remove(p, reason, only_node, skip_node)
  local k = pk(p)
  local f = redis.call('HMGET', k, 'room', 'node')
  local room, node = f[1], f[2]
  if not room then return 0 end
  if only_node and only_node ~= '' and node ~= only_node then return 0 end
  redis.call('DEL', k, k .. ':q')
  redis.call('SREM', 'ib:node:' .. node .. ':peers', p)
  local rk = 'ib:room:' .. room
  redis.call('HDEL', rk, p)
  local body = '{"type":"peer-left","id":"' .. p .. '","reason":"' .. reason .. '"'
  for _, m in ipairs(redis.call('HKEYS', rk)) do
    if not (skip_node and redis.call('HGET', pk(m), 'node') == skip_node) then
      deliver(m, body, nil)
    end
  end
  return 1
end

local function run()
if op == 'deliver' then
  -- Groups back to back, each: the sender's room ('' = no check: a message to oneself),
  -- the sender, a count n, then n pairs of (recipient, body). Several senders' signals
  -- go in one run (the node batches what arrives while the previous run is in flight).
  -- Returns one seq (or -1: not in that room) per pair, in order.
  local out = {}
  local i = 6
  while i <= #ARGV do
    local room, from, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 3
    for _ = 1, n do
      local to = ARGV[i]
      if room ~= '' and to == from then
        out[#out + 1] = -1
      else
        out[#out + 1] = deliver(to, ARGV[i + 1], room ~= '' and room or nil)
      end
      i = i + 2
    end
  end
  return out

elseif op == 'join' then
  -- ARGV: 6 room, 7 id, 8 token, 9 node, 10 meta, 11 capacity, 12 peer-joined body.
  -- Returns {'full'} or {'ok', id1, meta1, id2, meta2, ...} (those already there).
  local room, id, node = ARGV[6], ARGV[7], ARGV[9]
  local rk = 'ib:room:' .. room
  if redis.call('HLEN', rk) >= tonumber(ARGV[11]) then return {'full'} end
  local out = {'ok'}
  local all = redis.call('HGETALL', rk)
  for i = 1, #all do out[#out + 1] = all[i] end
  for i = 1, #all, 2 do deliver(all[i], ARGV[12], nil) end
  redis.call('HSET', pk(id), 'room', room, 'node', node, 'token', ARGV[8], 'seq', 1, 'bytes', 0)
  redis.call('HSET', rk, id, ARGV[10])
  redis.call('SADD', 'ib:node:' .. node .. ':peers', id)
  return out

elseif op == 'leave' then
  -- ARGV: 6 id, 7 reason, 8 only this node ('' = any), 9 skip members on this node ('').
  local skip = ARGV[9]
  if skip == '' then skip = nil end
  return remove(ARGV[6], ARGV[7], ARGV[8], skip)

elseif op == 'resume' then
  -- ARGV: 6 id, 7 token, 8 last_seq, 9 node. Moves the peer to this node if the token is
  -- right and everything after last_seq is still in its outbox; tells the old node.
  -- Returns {'ok', seq, room, id1, meta1, ...}, {'unknown'} or {'unservable', why}.
  local id, node = ARGV[6], ARGV[9]
  local k = pk(id)
  local f = redis.call('HMGET', k, 'room', 'node', 'token', 'seq')
  local room, old, token, seq = f[1], f[2], f[3], tonumber(f[4])
  -- The token is 32 random characters compared inside Redis: no timing signal
  -- reaches a client through a network round trip and a script run.
  if not room or token ~= ARGV[7] then return {'unknown'} end
  local last = tonumber(ARGV[8])
  local why = nil
  if last > seq then
    why = 'last_seq is ahead of what the server sent'
  elseif last < seq then
    local q = k .. ':q'
    if tonumber(redis.call('LINDEX', q, prefix_upto(q, last))) ~= last + 1 then
      why = 'messages after last_seq are no longer buffered'
    end
  end
  if why then
    -- The token was right but the peer cannot be resumed: it leaves its room now (as on
    -- its own node), not at the end of its grace, and its node forgets it.
    if old ~= node then
      redis.call('PUBLISH', 'ib:node:' .. old, id .. ' 0 0 8 takeover')
    end
    remove(id, 'timeout', nil, nil)
    return {'unservable', why}
  end
  if old ~= node then
    redis.call('HSET', k, 'node', node)
    redis.call('SMOVE', 'ib:node:' .. old .. ':peers', 'ib:node:' .. node .. ':peers', id)
    redis.call('SADD', 'ib:node:' .. node .. ':peers', id)
    redis.call('PUBLISH', 'ib:node:' .. old, id .. ' 0 0 8 takeover')
  end
  local out = {'ok', seq, room}
  local all = redis.call('HGETALL', 'ib:room:' .. room)
  for i = 1, #all do out[#out + 1] = all[i] end
  return out

elseif op == 'ack' then
  -- ARGV: 6 id, 7 node, 8 seq: entries up to seq are trimmed (if the node still holds it).
  local k = pk(ARGV[6])
  if redis.call('HGET', k, 'node') ~= ARGV[7] then return 0 end
  local q = k .. ':q'
  -- A peer that acks is alive: what it has not acknowledged yet lives another TTL.
  redis.call('PEXPIRE', q, TTL)
  local cnt = prefix_upto(q, tonumber(ARGV[8]))
  if cnt == 0 then return 0 end
  local gone = redis.call('LPOP', q, cnt)
  local n = 0
  for j = 2, #gone, 2 do n = n + #gone[j] end
  if #gone > 0 then redis.call('HINCRBY', k, 'bytes', -n) end
  return #gone / 2

elseif op == 'register' then
  -- A node (re)writes a peer it holds, after Redis came back: ARGV 6 id, 7 room, 8 node,
  -- 9 token, 10 meta, 11 seq it delivered, then (seq, json) of its unacknowledged
  -- messages. Returns the seq Redis had (more than ours: messages we missed).
  local id, room, node = ARGV[6], ARGV[7], ARGV[8]
  local k = pk(id)
  local had = tonumber(redis.call('HGET', k, 'seq') or '0')
  local mine = tonumber(ARGV[11])
  local old = redis.call('HGET', k, 'node')
  if old and old ~= node then
    -- Someone else took it over meanwhile: theirs now.
    return -1
  end
  redis.call('HSET', k, 'room', room, 'node', node, 'token', ARGV[9])
  if mine > had then redis.call('HSET', k, 'seq', mine) end
  if not redis.call('HGET', k, 'bytes') then redis.call('HSET', k, 'bytes', 0) end
  redis.call('HSET', 'ib:room:' .. room, id, ARGV[10])
  redis.call('SADD', 'ib:node:' .. node .. ':peers', id)
  local q = k .. ':q'
  for i = 12, #ARGV, 2 do
    if tonumber(ARGV[i]) > had then
      redis.call('RPUSH', q, ARGV[i], ARGV[i + 1])
      redis.call('HINCRBY', k, 'bytes', #ARGV[i + 1])
    end
  end
  redis.call('PEXPIRE', q, TTL)
  return had

elseif op == 'reap' then
  -- ARGV: 6 node, 7 grace ms, 8 most peers to remove now. A node whose alive key expired
  -- is dead; once the resume grace has passed since, its peers that nobody resumed are
  -- removed (peer-left timeout), exactly once since this runs atomically. Returns the
  -- number removed, or -1 when the node is alive, -2 while its grace runs.
  local n = ARGV[6]
  if redis.call('EXISTS', 'ib:node:' .. n .. ':alive') == 1 then
    redis.call('DEL', 'ib:dead:' .. n)
    return -1
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local dead = redis.call('GET', 'ib:dead:' .. n)
  if not dead then
    redis.call('SET', 'ib:dead:' .. n, now)
    return -2
  end
  if now - tonumber(dead) < tonumber(ARGV[7]) then return -2 end
  local set = 'ib:node:' .. n .. ':peers'
  local removed = 0
  for _, p in ipairs(redis.call('SRANDMEMBER', set, tonumber(ARGV[8]))) do
    removed = removed + remove(p, 'timeout', n, nil)
    redis.call('SREM', set, p)
  end
  if redis.call('SCARD', set) == 0 then
    redis.call('DEL', set, 'ib:dead:' .. n)
    redis.call('SREM', 'ib:nodes', n)
  end
  return removed
end
return redis.error_reply('unknown op ' .. tostring(op))
end

local result = run()
flush()
return result
