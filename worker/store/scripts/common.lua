-- Shared by every function that writes a payment record. Redis server time is the one clock: leases,
-- ages, next-check times and the attempt journal all come from TIME here, never from a worker's clock.
-- KEYS (same order everywhere): 1 record (P op:<payment_id>) 2 key:<payment_id> (the key index entry forget.lua
-- leaves when the record leaves Redis; read by claim.lua). The shared keys are derived from the prefix P, the two
-- keys' common start ('op:' and 'key:' differ at their first letter): idx:trans idx:time idx:non_final
-- idx:open_auths idx:voids_due audit outbox idx:outbox idx:reflect_due idx:status_counts idx:unknown idx:retrying
-- idx:needs_human (what the metrics exporter reads). Naming keys a call does not pass in KEYS is fine on one Redis
-- or Sentinel, all the store runs on; it never runs on Cluster (where a record and the shared indexes could not be
-- in one slot anyway). Each named key costs ~2 µs per call: 2 instead of 16.
-- This file runs once, when the library loads (worker/store/lua.py); bind() names the keys of each call.
local REC, IDX_TRANS, IDX_TIME, IDX_NF, IDX_OPEN, IDX_VOIDS, AUDIT, OUTBOX, IDX_OUTBOX, IDX_REFLECT
local IDX_COUNTS, IDX_UNKNOWN, IDX_RETRYING, IDX_HUMAN, KEPT
-- The last prefix's keys, kept between calls (all calls but the first after a load use the same prefix).
local bound, bound_op, bound_key = nil, nil, nil
local function bind(keys)
  REC, KEPT = keys[1], keys[2]
  if bound and string.sub(REC, 1, #bound_op) == bound_op and string.sub(KEPT, 1, #bound_key) == bound_key then
    return
  end
  local i = 1
  while i <= #REC and string.byte(REC, i) == string.byte(KEPT, i) do i = i + 1 end
  local p = string.sub(REC, 1, i - 1)
  if string.sub(REC, i, i + 2) ~= 'op:' or string.sub(KEPT, i, i + 3) ~= 'key:' then
    error('record keys must be P op:<id> and P key:<id>')
  end
  IDX_TRANS, IDX_TIME, IDX_NF, IDX_OPEN, IDX_VOIDS, AUDIT, OUTBOX, IDX_OUTBOX, IDX_REFLECT =
    p .. 'idx:trans', p .. 'idx:time', p .. 'idx:non_final', p .. 'idx:open_auths', p .. 'idx:voids_due',
    p .. 'audit', p .. 'outbox', p .. 'idx:outbox', p .. 'idx:reflect_due'
  IDX_COUNTS, IDX_UNKNOWN, IDX_RETRYING, IDX_HUMAN =
    p .. 'idx:status_counts', p .. 'idx:unknown', p .. 'idx:retrying', p .. 'idx:needs_human'
  bound, bound_op, bound_key = p, p .. 'op:', p .. 'key:'
end
local NON_FINAL = {PENDING = true, RETRYING = true, UNKNOWN = true}
local FOLLOW_UPS = {capture = true, refund = true, void = true, update = true}
local HISTORY_CAP = __HISTORY_CAP__
local AUDIT_MAXLEN = '__AUDIT_MAXLEN__'

-- Redis TIME ({seconds, microseconds}): every function reads the clock here. (The tests' build of the library adds
-- the offset their clock has advanced by: worker/store/lua.py TEST_CLOCK.)
local function server_clock()
  --<clock>
  return redis.call('TIME')
  --</clock>
end

local function server_now()
  local t = server_clock()
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- '000'..'999' and '000Z'..'999Z', each made once, when first needed, and kept between calls: the clock's strings
-- are put together from the current second's (also kept) and these, without a string.format per call.
local MS, MSZ = {}, {}
local function ms3(ms)
  local v = MS[ms]
  if not v then
    v = string.format('%03d', ms)
    MS[ms] = v
  end
  return v
end
local function ms3z(ms)
  local v = MSZ[ms]
  if not v then
    v = ms3(ms) .. 'Z'
    MSZ[ms] = v
  end
  return v
end

-- Milliseconds, rounded down: a stamp is never later than the TIME it came from (rounded to nearest, a lease of 0 s
-- or a record just written could look up to 0.5 ms in the future to the next script within the same millisecond).
-- The same string as string.format('%.3f', math.floor(t * 1000) / 1000).
local ts_sec, ts_prefix = nil, nil
local function ts(t)
  local k = math.floor(t * 1000)
  local secs = math.floor(k / 1000)
  if secs ~= ts_sec then ts_sec, ts_prefix = secs, string.format('%d.', secs) end
  return ts_prefix .. ms3(k - secs * 1000)
end

-- The second a stamp falls in (its text before the point): idx:non_final's score. A sorted set of up to 128 members
-- is a listpack, which keeps a whole-number score as an integer: an insert among the ~50 records in flight compares
-- integers instead of parsing every member's score with strtod (~60k fewer instructions per insert and removal,
-- callgrind). Rounded down, so a range by score holds every record it should; its reader checks the record's own
-- updated_ts (records.py stale_non_final), and an age read from the score is at most 1 s older.
local function second_of(stamp)
  local dot = string.find(stamp, '.', 1, true)
  return dot and string.sub(stamp, 1, dot - 1) or stamp
end

-- ISO-8601 UTC with milliseconds (days -> civil date: H. Hinnant's algorithm).
local iso_sec, iso_prefix = nil, nil
local function iso(t)
  local secs = math.floor(t)
  local ms = math.floor((t - secs) * 1000)
  if secs ~= iso_sec then
    local days = math.floor(secs / 86400)
    local rem = secs - days * 86400
    local z = days + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local d = doy - math.floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    if m <= 2 then y = y + 1 end
    iso_sec, iso_prefix = secs, string.format('%04d-%02d-%02dT%02d:%02d:%02d.', y, m, d,
      math.floor(rem / 3600), math.floor((rem % 3600) / 60), rem % 60)
  end
  return iso_prefix .. ms3z(ms)
end

-- A record's history is one field of its hash, ``history``: a JSON list of {at, status, note}, oldest first, capped
-- at HISTORY_CAP entries, written in the same HSET as the change it records (no key, command or expiry of its own).
-- Records written before 2026-12-08 began it in the list P hist:<id> (RPUSH): readers put that list first, and
-- retention removes it with the record (worker/store/records.py ResultsStore.get).
-- No entry is shorter than 48 bytes: below HISTORY_CAP * 48 the list cannot be past its cap, and is not decoded.
local HISTORY_CHECK_BYTES = HISTORY_CAP * 48
local function with_history(current, at, to, note)
  local entry = cjson.encode({at = at, status = to, note = note})
  if not current or current == '' then return '[' .. entry .. ']' end
  local joined = string.sub(current, 1, -2) .. ',' .. entry .. ']'
  if #joined > HISTORY_CHECK_BYTES then
    local all = cjson.decode(joined)
    if #all > HISTORY_CAP then
      local kept = {}
      for i = #all - HISTORY_CAP + 1, #all do kept[#kept + 1] = all[i] end
      joined = cjson.encode(kept)
    end
  end
  return joined
end

-- The time index of one merchant account other than `default` (P idx:merchant:<name>:time, score created_ts): what
-- `payments list --merchant NAME` reads (docs/merchants.md): merchant_key(NAME .. ':time'), beside idx:time.
-- P idx:merchant:since: when the first was written (see claim.lua). Also per account (the exporter's and status's
-- counts, docs/merchants.md): NAME:counts (hash: its records by status, every status) and NAME:unknown /
-- NAME:retrying (zsets as idx:unknown / idx:retrying). A record of `default` names no merchant: none of these.
local function merchant_key(suffix)
  return string.sub(IDX_TIME, 1, #IDX_TIME - #'idx:time') .. 'idx:merchant:' .. suffix
end

-- The audit entry and the count of records by final status; the caller writes the history entry (with_history) in
-- its own HSET of the record.
local function log_event(pid, op, from, to, note, at, trans_id, merchant)
  -- Records by FINAL status: every status change passes here (and a record leaves only through forget.lua).
  -- Non-final ones are counted by their indexes (PENDING = non_final - unknown - retrying: store/health.py),
  -- which saves two HINCRBY per payment.
  if from ~= to then
    if from ~= '' and not NON_FINAL[from] then redis.call('HINCRBY', IDX_COUNTS, from, -1) end
    if not NON_FINAL[to] then redis.call('HINCRBY', IDX_COUNTS, to, 1) end
    -- Another account's records by status, every status (it has no index of non-final ones).
    if (merchant or '') ~= '' then
      local counts = merchant_key(merchant .. ':counts')
      if from ~= '' then redis.call('HINCRBY', counts, from, -1) end
      redis.call('HINCRBY', counts, to, 1)
    end
  end
  redis.call('XADD', AUDIT, 'MAXLEN', '~', AUDIT_MAXLEN, '*',
    'payment_id', pid, 'operation', op, 'from', from, 'to', to, 'note', note, 'at', at,
    'trans_id', trans_id)
end

-- The same for a script that has not read the record's history: its history entry read and written here.
local function record_event(rec, pid, op, from, to, note, at, trans_id)
  local r = redis.call('HMGET', rec, 'history', 'merchant')
  redis.call('HSET', rec, 'history', with_history(r[1], at, to, note))
  log_event(pid, op, from, to, note, at, trans_id, r[2])
end

-- A record for a reply: its fields without the history (ResultsStore.get reads that).
local function record_reply(rec)
  local flat = redis.call('HGETALL', rec)
  for i = 1, #flat - 1, 2 do
    if flat[i] == 'history' then
      table.remove(flat, i)
      table.remove(flat, i)
      break
    end
  end
  return flat
end

-- Recompute every index membership of the record at ``rec`` from its current state.
local function reindex(rec, pid, old_trans)
  local r = redis.call('HMGET', rec, 'status', 'operation', 'then_void', 'trans_id',
                       'created_ts', 'updated_ts', 'reflected', 'needs_human', 'amount', 'merchant')
  local status, op, then_void, trans_id = r[1], r[2], r[3], r[4] or ''
  local created_ts, updated_ts, reflected = r[5], r[6], r[7]
  if NON_FINAL[status] then
    redis.call('ZADD', IDX_NF, second_of(updated_ts), pid)
  else
    redis.call('ZREM', IDX_NF, pid)
  end
  -- Money in doubt, by age since creation (the metrics exporter: count and oldest without a scan).
  if status == 'UNKNOWN' then
    redis.call('ZADD', IDX_UNKNOWN, created_ts, pid)
  else
    redis.call('ZREM', IDX_UNKNOWN, pid)
  end
  if status == 'RETRYING' then
    redis.call('ZADD', IDX_RETRYING, created_ts, pid)
  else
    redis.call('ZREM', IDX_RETRYING, pid)
  end
  if (r[10] or '') ~= '' then
    for name, member in pairs({unknown = status == 'UNKNOWN', retrying = status == 'RETRYING'}) do
      local key = merchant_key(r[10] .. ':' .. name)
      if member then redis.call('ZADD', key, created_ts, pid) else redis.call('ZREM', key, pid) end
    end
  end
  if r[8] == '1' then redis.call('ZADD', IDX_HUMAN, updated_ts, pid) else redis.call('ZREM', IDX_HUMAN, pid) end
  -- A $0 auth only stores the card (its id is a token): nothing is held, so the stale-auth sweep never voids it.
  if op == 'auth' and status == 'APPROVED' and tonumber(r[9] or '') ~= 0 then
    redis.call('ZADD', IDX_OPEN, created_ts, pid)
  else
    redis.call('ZREM', IDX_OPEN, pid)
  end
  if op == 'sale' and status == 'APPROVED' and then_void == '1' then
    redis.call('ZADD', IDX_VOIDS, updated_ts, pid)
  else
    redis.call('ZREM', IDX_VOIDS, pid)
  end
  if FOLLOW_UPS[op] and status == 'APPROVED' and reflected ~= '1' then
    redis.call('ZADD', IDX_REFLECT, updated_ts, pid)
  else
    redis.call('ZREM', IDX_REFLECT, pid)
  end
  if old_trans and old_trans ~= '' and old_trans ~= trans_id then
    if redis.call('HGET', IDX_TRANS, old_trans) == pid then redis.call('HDEL', IDX_TRANS, old_trans) end
  end
  if trans_id ~= '' then redis.call('HSETNX', IDX_TRANS, trans_id, pid) end
  return trans_id
end

-- The hot path's reindex: the index memberships a record in state ``s`` (a table of its fields) has, as
-- {index key = score}. Same rules as reindex() above.
local function memberships(s)
  local m, status, op = {}, s.status, s.operation
  if NON_FINAL[status] then m[IDX_NF] = second_of(s.updated_ts) end
  if status == 'UNKNOWN' then m[IDX_UNKNOWN] = s.created_ts end
  if status == 'RETRYING' then m[IDX_RETRYING] = s.created_ts end
  if (s.merchant or '') ~= '' and (status == 'UNKNOWN' or status == 'RETRYING') then
    m[merchant_key(s.merchant .. ':' .. string.lower(status))] = s.created_ts
  end
  if s.needs_human == '1' then m[IDX_HUMAN] = s.updated_ts end
  if status == 'APPROVED' then
    if op == 'auth' and tonumber(s.amount or '') ~= 0 then m[IDX_OPEN] = s.created_ts end  -- $0: a stored card
    if op == 'sale' and s.then_void == '1' then m[IDX_VOIDS] = s.updated_ts end
    if FOLLOW_UPS[op] and s.reflected ~= '1' then m[IDX_REFLECT] = s.updated_ts end
  end
  return m
end

-- Move a record from state ``old`` (nil: a new record) to ``new`` in the indexes: ZADD where it belongs now,
-- ZREM only where ``old`` put it and ``new`` does not (the same end state as reindex(), without its HMGET and
-- its no-op ZREMs: ~7 fewer commands per call).
-- ``before``/``old_trans``: the old state's memberships and trans id, taken before the caller changed that table.
local function reindex_moved(pid, before, old_trans, new)
  local after = memberships(new)
  for key, score in pairs(after) do redis.call('ZADD', key, score, pid) end
  for key in pairs(before) do
    if after[key] == nil then redis.call('ZREM', key, pid) end
  end
  local trans_id = new.trans_id or ''
  if old_trans ~= '' and old_trans ~= trans_id then
    if redis.call('HGET', IDX_TRANS, old_trans) == pid then redis.call('HDEL', IDX_TRANS, old_trans) end
  end
  if trans_id ~= '' then redis.call('HSETNX', IDX_TRANS, trans_id, pid) end
  return trans_id
end

-- Flat field/value pairs (HGETALL's or HSET's arguments) <-> a table; the last value of a field wins, as in HSET.
local function to_table(flat, first, t)
  t = t or {}
  for i = first or 1, #flat - 1, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function to_pairs(t)
  local flat = {}
  for k, v in pairs(t) do
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  return flat
end

-- Amounts are two-decimal strings; arithmetic is in integer cents (exact in Lua's doubles).
local function cents(text)
  local whole, frac = string.match(text or '', '^(%d+)%.?(%d*)$')
  if not whole then return nil end
  frac = (frac .. '00'):sub(1, 2)
  return tonumber(whole) * 100 + tonumber(frac)
end

local function money(c) return string.format('%d.%02d', math.floor(c / 100), c % 100) end

-- The operation a follow-up refers to: its ``parent`` record if there is one, else the record of its ``target``
-- trans id (nil: none known).
local function original_of(prefix, parent, target)
  if (parent or '') ~= '' and redis.call('EXISTS', prefix .. 'op:' .. parent) == 1 then return parent end
  if (target or '') ~= '' then return redis.call('HGET', IDX_TRANS, target) or nil end
  return nil
end

-- A void of a refund (``o``: the refund's status, operation, amount, refunded_amount, target, parent) gives its
-- amount back to what it refunded, as the gateway does: REFUNDED or PARTIALLY_REFUNDED goes back to
-- PARTIALLY_REFUNDED, or to APPROVED once nothing is refunded. Only a refund that was counted (reflected) is.
local function restore_refunded(prefix, o, refund_pid, fu_pid, at, now)
  if redis.call('HGET', prefix .. 'op:' .. refund_pid, 'reflected') ~= '1' then return end
  local this = cents(o[3])
  local parent = original_of(prefix, o[6], o[5])
  if not this or not parent or parent == refund_pid then return end
  local pkey = prefix .. 'op:' .. parent
  local p = redis.call('HMGET', pkey, 'status', 'refunded_amount', 'operation')
  if p[1] ~= 'REFUNDED' and p[1] ~= 'PARTIALLY_REFUNDED' then return end
  local after = math.max((cents(p[2]) or 0) - this, 0)
  local new_status = after > 0 and 'PARTIALLY_REFUNDED' or 'APPROVED'
  redis.call('HSET', pkey, 'status', new_status, 'refunded_amount', money(after), 'updated_at', at,
             'updated_ts', ts(now))
  local ptrans = reindex(pkey, parent, nil)
  record_event(pkey, parent, p[3] or '', p[1], new_status,
               'refund ' .. refund_pid .. ' of ' .. money(this) .. ' voided by ' .. fu_pid .. ' (' .. money(after) ..
               ' refunded in all)', at, ptrans)
end

-- Reflect an APPROVED capture/refund/void (record ``fu_rec``) on its original operation, once
-- (``reflected`` = 1), atomically with whatever else the calling script does. Returns what happened.
local function reflect(prefix, fu_rec, fu_pid, at, now)
  local f = redis.call('HMGET', fu_rec, 'status', 'operation', 'parent', 'target', 'amount', 'message',
                       'reflected', 'trans_type')
  local status, op, parent, target, amount, message, reflected = f[1], f[2], f[3] or '', f[4] or '', f[5] or '',
    f[6] or '', f[7]
  local trans_type = string.upper(f[8] or '')
  if status ~= 'APPROVED' or reflected == '1' or not FOLLOW_UPS[op] then return 'nothing' end
  local orig = original_of(prefix, parent, target)
  local function done(result)
    redis.call('HSET', fu_rec, 'reflected', '1')
    reindex(fu_rec, fu_pid, nil)
    return result
  end
  if not orig or orig == fu_pid then return done('no_original') end
  local okey = prefix .. 'op:' .. orig
  local o = redis.call('HMGET', okey, 'status', 'operation', 'amount', 'refunded_amount', 'target', 'parent',
                       'trans_id')
  local ostatus, oop, oamount, orefunded = o[1], o[2], o[3] or '', o[4] or ''
  if not ostatus then return done('no_original') end
  if NON_FINAL[ostatus] then return 'original_not_final' end
  local new_status, fields, note = nil, {}, ''
  -- A refund of an unsettled sale comes back as a VOID (its trans type; older records: its message).
  local is_void = op == 'void' or (op == 'refund' and (trans_type == 'VOID' or
    (trans_type == '' and string.find(string.lower(message), 'void', 1, true) ~= nil)))
  if is_void then
    if ostatus == 'VOIDED' then return done('already') end
    new_status, fields, note = 'VOIDED', {'voided_by', fu_pid}, 'voided by ' .. fu_pid
  elseif op == 'update' then
    -- An UPDATE replaced it (its new amount): later voids and refunds name the update (docs/tokens.md).
    if ostatus ~= 'APPROVED' then return done('already') end
    new_status, fields, note = 'UPDATED', {'updated_by', fu_pid, 'updated_amount', amount}, 'updated to ' ..
      amount .. ' by ' .. fu_pid
  elseif op == 'capture' then
    if ostatus ~= 'APPROVED' then return done('already') end
    new_status, fields, note = 'CAPTURED', {'captured_by', fu_pid}, 'captured by ' .. fu_pid
    -- A capture without an amount took the whole auth: say so, or a refund of it has no total to count against.
    if amount == '' and oamount ~= '' then redis.call('HSET', fu_rec, 'amount', oamount) end
  else
    local total = cents(oamount)
    local before = cents(orefunded) or 0
    local this = cents(amount)
    local rest = not this  -- no amount: the gateway refunded what was left of it
    if rest then this = math.max((total or 0) - before, 0) end
    local after = before + this
    -- The gateway never refunds more than was charged: a count past it is ours (an answer without AMOUNT, counted
    -- as "what was left" before an earlier refund was recorded).
    if total and after > total then after = total end
    -- A refund without an amount took what was left: say how much, or a void of it has nothing to give back.
    if rest and total then redis.call('HSET', fu_rec, 'amount', money(this)) end
    if rest or (total and after >= total) then new_status = 'REFUNDED' else new_status = 'PARTIALLY_REFUNDED' end
    fields = {'refunded_by', fu_pid, 'refunded_amount', money(after)}
    note = 'refunded ' .. money(this) .. ' by ' .. fu_pid .. ' (' .. money(after) .. ' in all)'
  end
  for _, v in ipairs({'status', new_status, 'updated_at', at, 'updated_ts', ts(now)}) do fields[#fields + 1] = v end
  redis.call('HSET', okey, unpack(fields))
  local otrans = reindex(okey, orig, nil)
  record_event(okey, orig, oop or '', ostatus, new_status, note, at, otrans)
  if is_void and oop == 'capture' then
    -- A void of a capture reopens its auth, as the gateway does.
    local auth = original_of(prefix, o[6], o[5])
    if auth then
      local akey = prefix .. 'op:' .. auth
      local a = redis.call('HMGET', akey, 'status', 'captured_by', 'operation')
      if a[1] == 'CAPTURED' and a[2] == orig then
        redis.call('HSET', akey, 'status', 'APPROVED', 'captured_by', '', 'updated_at', at, 'updated_ts', ts(now))
        local atrans = reindex(akey, auth, nil)
        record_event(akey, auth, a[3] or 'auth', 'CAPTURED', 'APPROVED',
                     'reopened: its capture ' .. orig .. ' was voided by ' .. fu_pid, at, atrans)
      end
    end
  end
  if is_void and oop == 'refund' then restore_refunded(prefix, o, orig, fu_pid, at, now) end
  return done('reflected')
end

-- The record's public outcome (worker/store/outcomes.py public_outcome, generated from its field lists when the
-- library is built: worker/store/lua.py): the contract's fields ('' when absent; attempts a number) and the optional
-- public ones that are not empty, in one table built at its final size (no rehash as it grows).
local TASK_STATUSES = {__TASK_STATUSES__}
__OUTCOME_FUNCTION__

-- The final write's other two parts (transition.lua, ARGV 8-10), in the same atomic call as the outcome: Celery's
-- result (its own key, value and pub/sub message: the meta the worker encoded, with the outcome in place of its
-- placeholder) and the broker message's ack (kombu's unacked hash and index). KEYS 3-5: result key, unacked,
-- unacked_index. ``meta`` '': no result to write; ``tag`` '': no ack.
local OUTCOME_PLACEHOLDER = '"__PAYMENTS_OUTCOME__"'
-- Returns the public outcome's JSON (the caller's reply). The task's outcome (outcomes.py task_outcome) is the same
-- but for a status a task may not return (in flight), shown as UNKNOWN: encoded again only then.
local function finish_task(keys, rec, meta, expires, tag)
  local o = outcome(rec)
  local public = cjson.encode(o)
  if meta ~= '' then
    local at = string.find(meta, OUTCOME_PLACEHOLDER, 1, true)
    if at then
      local task = public
      if not TASK_STATUSES[o.status] then
        o.status = 'UNKNOWN'
        task = cjson.encode(o)
      end
      local value = string.sub(meta, 1, at - 1) .. task .. string.sub(meta, at + #OUTCOME_PLACEHOLDER)
      if tonumber(expires) and tonumber(expires) > 0 then
        redis.call('SET', keys[3], value, 'EX', expires)
      else
        redis.call('SET', keys[3], value)
      end
      redis.call('PUBLISH', keys[3], value)
    end
  end
  if tag ~= '' then
    redis.call('HDEL', keys[4], tag)
    redis.call('ZREM', keys[5], tag)
  end
  return public
end
