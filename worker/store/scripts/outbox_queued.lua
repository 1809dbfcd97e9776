-- Which of the given task ids are still in the broker: waiting in a queue list, or delivered and not yet
-- acknowledged (kombu's "unacked" hash: a live worker holds it, or kombu restores it after the visibility timeout).
-- Such a message is not lost, and publishing it again would only multiply a backlog. One slice per call, so a long
-- queue never blocks Redis: the caller walks the list (LRANGE from ARGV[2]) or the hash (HSCAN cursor ARGV[2]).
-- KEYS: 1 a queue list, or the unacked hash. ARGV: 1 'list' or 'hash' 2 start / cursor 3 count 4.. task ids.
-- Returns {next start / cursor ('0': done), task ids found...}. A message that is not JSON kombu wrote is skipped.
local wanted = {}
for i = 4, #ARGV do wanted[ARGV[i]] = true end
local found, seen = {}, {}
local function note(message)
  local ok, decoded = pcall(cjson.decode, message)
  if not ok or type(decoded) ~= 'table' then return end
  if ARGV[1] == 'hash' then decoded = decoded[1] end  -- unacked: [message, exchange, routing_key]
  local headers = type(decoded) == 'table' and decoded.headers
  local id = type(headers) == 'table' and headers.id
  if type(id) == 'string' and wanted[id] and not seen[id] then
    seen[id] = true
    found[#found + 1] = id
  end
end
local count = tonumber(ARGV[3])
local next_at
if ARGV[1] == 'list' then
  local start = tonumber(ARGV[2])
  local items = redis.call('LRANGE', KEYS[1], start, start + count - 1)
  for _, message in ipairs(items) do note(message) end
  next_at = (#items < count) and '0' or tostring(start + count)
else
  local r = redis.call('HSCAN', KEYS[1], ARGV[2], 'COUNT', count)
  for i = 2, #r[2], 2 do note(r[2][i]) end
  next_at = r[1]
end
table.insert(found, 1, next_at)
return found
