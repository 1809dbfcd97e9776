-- The key index rebuilt from the archive (``payments archive --restore-keys``, for records that left Redis before
-- forget.lua left key index entries): each key gets its entry back unless Redis holds a record or an entry for it
-- already (those are newer), and only while PAYMENTS_KEY_RETENTION after the record's last change has not passed.
-- ARGV: 1 prefix 2 key_retention (seconds), then (payment_id, updated_ts, kept fields as a JSON object of strings)
-- triples. Returns the ids given an entry.
local prefix = ARGV[1]
local t = server_clock()
local now_ms = math.floor((tonumber(t[1]) + tonumber(t[2]) / 1000000) * 1000)
local key_retention = tonumber(ARGV[2])
local written = {}
for i = 3, #ARGV - 2, 3 do
  local pid, updated = ARGV[i], tonumber(ARGV[i + 1])
  local entry = prefix .. 'key:' .. pid
  local expires_ms = updated and math.floor((updated + key_retention) * 1000) or 0
  if expires_ms > now_ms and redis.call('EXISTS', prefix .. 'op:' .. pid) == 0
      and redis.call('EXISTS', entry) == 0 then
    local args = {}
    for name, value in pairs(cjson.decode(ARGV[i + 2])) do
      if type(value) == 'string' and value ~= '' then
        args[#args + 1] = name
        args[#args + 1] = value
      end
    end
    if #args > 0 then
      redis.call('HSET', entry, unpack(args))
      redis.call('PEXPIREAT', entry, string.format('%d', expires_ms))
      written[#written + 1] = pid
    end
  end
end
return written
