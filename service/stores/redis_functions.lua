#!lua name=bnaas_v1
-- The Redis store's server side: every state change of a session is ONE call here, so the
-- version check, the write, the idempotency record and the history entry are atomic.
--
-- Keys of a session share the hash tag {s:<id>} (Redis Cluster: one slot per session):
--   {s:<id>}:state       hash: v (version), st (state record), own (owner, "" = none), name,
--                        ca / ua (created / updated, unix seconds), tok (token of the commit
--                        that produced v)
--   {s:<id>}:idem:<key>  hash: fp (request fingerprint), rec (the small idempotency record);
--                        expires after BNAAS_IDEMPOTENCY_TTL_S
--   {s:<id>}:log         stream of history entries, capped (XADD MAXLEN ~)
-- Loaded at startup with FUNCTION LOAD REPLACE (idempotent). An incompatible change gets a new
-- library and function suffix (_v2), so replicas of two releases can share one Redis.
-- Redis 7.0 (Debian 12) is the floor: nothing newer than FUNCTION/FCALL is used.

local function replay(idem_key, fingerprint)
  local hit = redis.call('HMGET', idem_key, 'fp', 'rec')
  if not hit[1] then
    return nil
  end
  if hit[1] ~= fingerprint then
    return {'mismatch'}
  end
  return {'duplicate', hit[2]}
end

local function remember(idem_key, fingerprint, record, ttl_ms)
  redis.call('HSET', idem_key, 'fp', fingerprint, 'rec', record)
  redis.call('PEXPIRE', idem_key, ttl_ms)
end

local function append_log(log_key, maxlen, entry)
  if entry ~= '' then
    redis.call('XADD', log_key, 'MAXLEN', '~', maxlen, '*', 'e', entry)
  end
end

-- KEYS: state, idem (may be any key of the session when there is no idempotency key), log
-- ARGV: expected version, new state record, commit token, updated_at, has idem ('1'/'0'),
--       fingerprint, idempotency record, idempotency TTL (ms), history entry ('' = none),
--       history cap
-- -> {'committed', version} | {'conflict', version} | {'duplicate', record} | {'missing'}
--    | {'mismatch'}
local function commit(keys, args)
  local state_key, idem_key, log_key = keys[1], keys[2], keys[3]
  local expected, token = tonumber(args[1]), args[3]
  local current = redis.call('HMGET', state_key, 'v', 'tok')
  if not current[1] then
    return {'missing'}
  end
  local has_idem = args[5] == '1'
  if has_idem then
    local seen = replay(idem_key, args[6])
    if seen then
      return seen
    end
  end
  local version = tonumber(current[1])
  if version ~= expected then
    -- The same token one version later: this call was already applied and its answer lost
    -- on the way back (a resend after a dropped connection). Applying it again would
    -- count the batch twice.
    if version == expected + 1 and current[2] == token then
      return {'committed', version}
    end
    return {'conflict', version}
  end
  version = expected + 1
  redis.call('HSET', state_key, 'v', version, 'st', args[2], 'ua', args[4], 'tok', token)
  if has_idem then
    remember(idem_key, args[6], args[7], args[8])
  end
  append_log(log_key, args[10], args[9])
  return {'committed', version}
end

-- KEYS: state, log
-- ARGV: state record, version, owner ('' = none), name ('' = none), created_at
-- -> {'created'} | {'exists'}
local function create(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then
    return {'exists'}
  end
  redis.call('HSET', keys[1], 'v', args[2], 'st', args[1], 'own', args[3], 'name', args[4],
    'ca', args[5], 'ua', args[5], 'tok', '')
  redis.call('DEL', keys[2])
  return {'created'}
end

-- KEYS: state, log
-- ARGV: If-Match version ('' = any)
-- -> {'deleted'} | {'missing'} | {'mismatch', version}
local function delete(keys, args)
  local version = redis.call('HGET', keys[1], 'v')
  if not version then
    return {'missing'}
  end
  if args[1] ~= '' and tonumber(args[1]) ~= tonumber(version) then
    return {'mismatch', tonumber(version)}
  end
  -- Idempotency records of the session expire by themselves (their names are not known here,
  -- and a function may only touch the keys it is given).
  redis.call('DEL', keys[1], keys[2])
  return {'deleted'}
end

redis.register_function('bnaas_commit_v1', commit)
redis.register_function('bnaas_create_v1', create)
redis.register_function('bnaas_delete_v1', delete)
