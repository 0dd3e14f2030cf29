#!lua name=bnaas_v2
-- The Redis store's server side: every state change of a session is ONE call here, so the
-- version check, the write, the idempotency receipt and the history entry are atomic.
--
-- Keys of a session share the hash tag {s:<id>} (Redis Cluster: one slot per session):
--   {s:<id>}:state        hash: v (version), st (state record), own (owner, '' = none), name,
--                         ca / ua (created / updated, unix seconds), tok (token of the commit
--                         that produced v)
--   {s:<id>}:idem:<key>   hash: the receipt (fp, sid, ver, pl, ca); expires after the TTL
--   {s:<id>}:log          stream of full history entries, id = '<version>-0', capped
--   {s:<id>}:brief        stream of brief entries of older fits, id = '<version>-0', capped
--   {s:<id>}:lease        string: the token of the process whose turn it is to commit (PX)
--   {s:<id>}:queue        list: tokens waiting for the lease, in order
--   {s:<id>}:wake:<tok>   list: a waiter's wake-up (BLPOP), pushed when the lease is handed to it
-- Receipts of creates live under their own tag, {<scope>}:receipt:<key> (claim below).
-- Loaded at startup with FUNCTION LOAD REPLACE (idempotent). An incompatible change gets a new
-- library and function suffix (_v3), so replicas of two releases can share one Redis.
-- Redis 7.0 (Debian 12) is the floor: nothing newer than FUNCTION/FCALL is used.
-- v2 (over v1): the per-session lease. v1's functions stay callable by replicas of the older
-- release: they ignore the lease, and the version check keeps every commit exact anyway.

-- The lease of a hot session is only an optimization (writers take turns instead of racing
-- and retrying): the version check in commit() is what keeps counts exact, so a lease that
-- expires under a slow holder costs a retry, never a wrong state. A dead holder's lease
-- expires by itself (PX); a release hands the lease to the oldest waiter (fair: a busy
-- process cannot starve another) and wakes it.
local function wake_key(lease_key, token)
  -- Same hash tag as the lease key, so the same Cluster slot (the token is not known when
  -- the caller declares its keys).
  return string.sub(lease_key, 1, #lease_key - #'lease') .. 'wake:' .. token
end

local function release(lease_key, queue_key, token, px)
  if token == '' or redis.call('GET', lease_key) ~= token then
    return
  end
  local nxt = redis.call('LPOP', queue_key)
  if not nxt then
    redis.call('DEL', lease_key)
    return
  end
  redis.call('SET', lease_key, nxt, 'PX', px)
  local wake = wake_key(lease_key, nxt)
  redis.call('RPUSH', wake, '1')
  redis.call('PEXPIRE', wake, px)
end

local function receipt_reply(tag, key)
  local r = redis.call('HMGET', key, 'fp', 'sid', 'ver', 'pl', 'ca')
  if not r[1] then
    return nil
  end
  return {tag, r[1], r[2], r[3], r[4], r[5]}
end

local function keep_receipt(key, args, first, ttl_ms)
  redis.call('HSET', key, 'fp', args[first], 'sid', args[first + 1], 'ver', args[first + 2],
    'pl', args[first + 3], 'ca', args[first + 4])
  redis.call('PEXPIRE', key, ttl_ms)
end

-- The HistoryPolicy: the `recent` newest entries full; an entry pushed out of those is kept
-- brief when its version is a multiple of `every`; at most `older` brief entries.
local function append_history(log_key, brief_key, version, full, brief, recent, every, older)
  if recent <= 0 then
    return
  end
  redis.call('XADD', log_key, version .. '-0', 'f', full, 'b', brief)
  while redis.call('XLEN', log_key) > recent do
    local oldest = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)[1]
    local id, fields = oldest[1], oldest[2]
    redis.call('XDEL', log_key, id)
    local v = tonumber(string.match(id, '^(%d+)'))
    if every > 0 and older > 0 and v % every == 0 then
      local b = fields[4]  -- fields = {'f', full, 'b', brief}
      redis.call('XADD', brief_key, id, 'b', b)
      redis.call('XTRIM', brief_key, 'MAXLEN', older)
    end
  end
end

-- KEYS: state  ARGV: check owner ('1'/'0'), owner, version the caller has decoded ('' = none)
-- -> nil (missing, or another owner's: the same answer) | {v, own, name, ca, ua, st | nil}
-- The owner is checked before the state is read; the state is sent only when the caller's
-- decoded copy is not current.
local function read(keys, args)
  local m = redis.call('HMGET', keys[1], 'v', 'own', 'name', 'ca', 'ua')
  if not m[1] then
    return nil
  end
  if args[1] == '1' and m[2] ~= args[2] then
    return nil
  end
  local st = false
  if m[1] ~= args[3] then
    st = redis.call('HGET', keys[1], 'st')
  end
  return {m[1], m[2], m[3], m[4], m[5], st}
end

-- KEYS: state, lease, queue, wake (this token's)
-- ARGV: 1 token, 2 lease ms, 3 version the caller has decoded ('' = none)
-- -> {'missing'} | {'wait', ms until the lease expires}
--    | {'held', v, own, name, ca, ua, st | nil (the caller's version is current)}
-- Takes the lease when it is free (or was handed to this token); else queues the token.
local function lease(keys, args)
  local state_key, lease_key, queue_key = keys[1], keys[2], keys[3]
  local token, px = args[1], tonumber(args[2])
  local m = redis.call('HMGET', state_key, 'v', 'own', 'name', 'ca', 'ua')
  if not m[1] then
    return {'missing'}
  end
  local holder = redis.call('GET', lease_key)
  if holder and holder ~= token then
    redis.call('LREM', queue_key, 0, token)  -- a waiter that timed out asks again: once queued
    redis.call('RPUSH', queue_key, token)
    redis.call('PEXPIRE', queue_key, 10 * px)  -- waiters that all died leave nothing behind
    return {'wait', redis.call('PTTL', lease_key)}
  end
  if not holder then
    redis.call('SET', lease_key, token, 'PX', px)
    redis.call('LREM', queue_key, 0, token)
  end
  local st = false
  if m[1] ~= args[3] then
    st = redis.call('HGET', state_key, 'st')
  end
  return {'held', m[1], m[2], m[3], m[4], m[5], st}
end

-- KEYS: state, receipt (the state key again when there is none), log, brief, lease, queue
-- ARGV: 1 expected version, 2 new state record, 3 commit token, 4 now,
--       5 has receipt ('1'/'0'), 6..10 receipt fp, sid, ver, payload, created_at,
--       11 receipt TTL (ms), 12 has history ('1'/'0'), 13 full entry, 14 brief entry,
--       15 recent, 16 every, 17 older, 18 lease token held ('' = none), 19 lease ms
-- -> {'duplicate', fp, sid, ver, payload, ca} | {'missing'}
--    | {'conflict', version, own, name, ca, ua, st} (another writer moved the version)
--    | {'conflict', version} (at the expected version, but another caller holds the lease)
--    | {'committed', version, ua, own, name, ca}
-- (Replicas of the release before the stored conflict session read only its version.)
-- Whatever the outcome, the caller's lease is released (handed to the next waiter) in this
-- same call: a turn costs no extra round trip. While another caller holds the lease, this
-- commit is a conflict even at the expected version: the holder combined on that version
-- too, and a writer that ignored leases would make it retry again and again.
local function commit(keys, args)
  local holder = redis.call('GET', keys[5])
  local intruder = holder and holder ~= args[18]
  release(keys[5], keys[6], args[18], tonumber(args[19]))
  local state_key, receipt_key, log_key, brief_key = keys[1], keys[2], keys[3], keys[4]
  local expected, token = tonumber(args[1]), args[3]
  local current = redis.call('HMGET', state_key, 'v', 'tok', 'own', 'name', 'ca')
  -- Deleting a session drops its receipts: one whose session is gone is not held.
  if not current[1] then
    return {'missing'}
  end
  local has_receipt = args[5] == '1'
  if has_receipt then
    local held = receipt_reply('duplicate', receipt_key)
    if held then
      return held
    end
  end
  local version = tonumber(current[1])
  -- The same token one version on: this very call was applied and its answer lost on the way
  -- back (a resend after a dropped connection). Applying it again would count the batch twice.
  if version == expected + 1 and current[2] == token then
    return {'committed', version, redis.call('HGET', state_key, 'ua'), current[3], current[4],
      current[5]}
  end
  if version ~= expected then
    -- What a re-read would answer, in this same call: the caller combines again on it
    -- without another round trip.
    local m = redis.call('HMGET', state_key, 'own', 'name', 'ca', 'ua', 'st')
    return {'conflict', version, m[1], m[2], m[3], m[4], m[5]}
  end
  if intruder then
    return {'conflict', version}
  end
  version = expected + 1
  redis.call('HSET', state_key, 'v', version, 'st', args[2], 'ua', args[4], 'tok', token)
  if has_receipt then
    keep_receipt(receipt_key, args, 6, args[11])
  end
  if args[12] == '1' then
    append_history(log_key, brief_key, version, args[13], args[14], tonumber(args[15]),
      tonumber(args[16]), tonumber(args[17]))
  end
  return {'committed', version, args[4], current[3], current[4], current[5]}
end

-- KEYS: state, log, brief  ARGV: state record, version, owner ('' = none), name, created_at
-- -> {'created'} | {'exists'}
local function create(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then
    return {'exists'}
  end
  redis.call('HSET', keys[1], 'v', args[2], 'st', args[1], 'own', args[3], 'name', args[4],
    'ca', args[5], 'ua', args[5], 'tok', '')
  redis.call('DEL', keys[2], keys[3])
  return {'created'}
end

-- A create's receipt. KEYS: receipt  ARGV: 1..5 fp, sid, ver, payload, created_at,
-- 6 TTL (ms), 7 the session id a stale receipt names ('' = none)
-- -> {'claimed'} | {'held', fp, sid, ver, payload, ca}
-- Taken after the session exists; a receipt naming a session that is gone (deleted, or its
-- create died half way) is replaced only by the caller that saw it gone (compare-and-set).
local function claim(keys, args)
  local sid = redis.call('HGET', keys[1], 'sid')
  if sid and sid ~= args[7] then
    return receipt_reply('held', keys[1])
  end
  keep_receipt(keys[1], args, 1, args[6])
  return {'claimed'}
end

-- KEYS: state, log, brief, lease, queue
-- ARGV: check owner ('1'/'0'), owner, If-Match version ('' = any)
-- -> {'deleted', owner} | {'missing'} | {'mismatch', version}
local function delete(keys, args)
  local m = redis.call('HMGET', keys[1], 'v', 'own')
  if not m[1] or (args[1] == '1' and m[2] ~= args[2]) then
    return {'missing'}
  end
  if args[3] ~= '' then  -- If-Match: a comma-separated list of versions, any may match
    local matched = false
    for v in string.gmatch(args[3], '%d+') do
      if tonumber(v) == tonumber(m[1]) then matched = true end
    end
    if not matched then return {'mismatch', tonumber(m[1])} end
  end
  -- Receipts of the session expire by themselves; until then commit() ignores them, since
  -- the session is gone.
  redis.call('DEL', keys[1], keys[2], keys[3], keys[4], keys[5])
  return {'deleted', m[2]}
end

redis.register_function{function_name = 'bnaas_read_v2', callback = read, flags = {'no-writes'}}
redis.register_function('bnaas_lease_v2', lease)
redis.register_function('bnaas_commit_v2', commit)
redis.register_function('bnaas_create_v2', create)
redis.register_function('bnaas_claim_v2', claim)
redis.register_function('bnaas_delete_v2', delete)
