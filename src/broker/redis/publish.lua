#!lua name=miteos
-- miteos-stream's Redis function library (SPEC §5, §7): each channel's history is a Stream
-- next to its pub/sub channel, and one call numbers an event, keeps it and publishes it,
-- atomically. Loaded by every node (FUNCTION LOAD REPLACE) at start and after every
-- reconnect; producers call it (docs/PRODUCERS.md):
--
--   FCALL mt_publish 2 {mt:<env>:<account>:<topic>}:h {mt:<env>:<account>:<topic>}:m <event JSON>
--     -> {offset, epoch}
--   FCALL mt_head    2 <same keys>                      -> {offset, epoch}
--   FCALL mt_history 2 <same keys> <after or ""> <limit> -> {head, epoch, first, {messages}}
--   FCALL_RO mt_settings 0                              -> {history_size, history_ttl_ms, max_event_bytes}
--
-- Keys: `{C}:h` is the Stream (entry ID `<offset>-0`, fields `p` = the published message,
-- `t` = publish time in ms); `{C}:m` is a hash with `epoch` and `seq` (the last offset).
-- Both carry the channel name C as their hash tag (one cluster slot) and expire
-- `history_ttl` after the channel's last publish: the next publish starts a new epoch.

-- The node's settings; the line is rewritten at load time (keep the marker at its end).
local SETTINGS = { size = 1000, ttl_ms = 600000, max_bytes = 65536, sharded = false } -- @settings

local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'

local function base36(n)
  local s = ''
  repeat
    local d = n % 36
    s = string.sub(B36, d + 1, d + 1) .. s
    n = math.floor(n / 36)
  until n == 0
  return s
end

local function int(n)
  return string.format('%.0f', n)
end

-- RFC 3339 UTC with milliseconds, from Unix seconds and microseconds (days to civil date:
-- H. Hinnant's algorithm; exact in doubles for any date Redis can report).
local function rfc3339(sec, usec)
  local days = math.floor(sec / 86400)
  local rem = sec - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d,
    math.floor(rem / 3600), math.floor(rem / 60) % 60, rem % 60, math.floor(usec / 1000))
end

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]), tonumber(t[2])
end

-- The channel name C of the keys `{C}:h` and `{C}:m`.
local function channel_of(keys)
  if #keys ~= 2 then
    return nil, 'MT_KEYS give the two keys {channel}:h and {channel}:m'
  end
  local c = string.match(keys[1], '^{(mt:[^:{}]+:[^:{}]+:[^:{}]+)}:h$')
  if not c or keys[2] ~= '{' .. c .. '}:m' then
    return nil, 'MT_KEYS keys must be {mt:<env>:<account>:<topic>}:h and {…same…}:m'
  end
  return c
end

-- The channel's epoch and last offset, starting a new epoch (and an empty history) if it
-- has none.
local function meta(h, m, sec, usec)
  local v = redis.call('HMGET', m, 'epoch', 'seq')
  if v[1] then
    return v[1], tonumber(v[2]) or 0
  end
  local epoch = base36(sec * 1000000 + usec) .. base36(math.random(1296, 46655))
  redis.call('DEL', h)
  redis.call('HSET', m, 'epoch', epoch, 'seq', 0)
  redis.call('PEXPIRE', m, SETTINGS.ttl_ms)
  return epoch, 0
end

-- What cjson lets through and the nodes' decoder (serde_json) refuses: control characters,
-- a number ending in `.`, invalid UTF-8, a repeated field the nodes read. Cheap global
-- checks decide whether the exact scan runs. Patterns are anchored (`^[…]*$`): an unanchored
-- class search restarts at every byte and costs ~4 µs on 200 bytes, an anchored one ~0.5.
local READ = { event = true, id = true, created_at = true, data = true, offset = true, epoch = true }
local QUOTED = { '"event"', '"id"', '"created_at"', '"data"', '"offset"', '"epoch"' }

local function utf8_error(s)
  local i, n = 1, #s
  while true do
    i = select(2, string.find(s, '^[%z\1-\127]*', i)) + 1
    if i > n then return nil end
    local c, need, lo, hi = string.byte(s, i), 0, 0x80, 0xBF
    if c >= 0xC2 and c <= 0xDF then need = 1
    elseif c >= 0xE0 and c <= 0xEF then
      need = 2
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      need = 3
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else return 'invalid UTF-8' end
    if i + need > n then return 'invalid UTF-8' end
    for k = 1, need do
      local b = string.byte(s, i + k)
      if b < lo or b > hi then return 'invalid UTF-8' end
      lo, hi = 0x80, 0xBF
    end
    i = i + need + 1
  end
end

-- The exact scan: string by string, tracking depth outside strings.
local function exact_error(s)
  local i, n, depth, seen = 1, #s, 0, {}
  while i <= n do
    local q = string.find(s, '"', i, true)
    local outside = string.sub(s, i, (q or n + 1) - 1)
    if string.find(outside, '%.[^%d]') or string.find(outside, '%.$') then
      return 'a number ending in `.`'
    end
    for c in string.gmatch(outside, '[%[%]{}]') do
      depth = depth + ((c == '{' or c == '[') and 1 or -1)
    end
    if not q then return nil end
    local j = q + 1
    while true do
      local k = string.find(s, '["\\]', j)
      if not k then return 'an unterminated string' end
      if string.byte(s, k) == 92 then j = k + 2 else j = k; break end
    end
    local raw = string.sub(s, q + 1, j - 1)
    if string.find(raw, '[%z\1-\31]') then return 'a control character in a string' end
    if depth == 1 and string.find(s, '^%s*:', j + 1) then
      local key = raw
      if string.find(raw, '\\', 1, true) then
        local ok, k = pcall(cjson.decode, '"' .. raw .. '"')
        if not ok then return 'an invalid escape' end
        key = k
      end
      if READ[key] then
        if seen[key] then return 'field `' .. key .. '` given twice' end
        seen[key] = true
      end
    end
    i = j + 1
  end
  return nil
end

-- A digit, `.`, then no digit: maybe a number ending in `.` (or just text in a string).
local function dot_after_digit(s)
  local i = string.find(s, '.', 2, true)
  while i do
    local before, after = string.byte(s, i - 1), string.byte(s, i + 1)
    if before >= 48 and before <= 57 and not (after and after >= 48 and after <= 57) then
      return true
    end
    i = string.find(s, '.', i + 1, true)
  end
  return false
end

local function strict_error(s)
  local scan = false
  if not string.find(s, '^[ -~]*$') then
    if not string.find(s, '^[^%z\1-\8\11\12\14-\31]*$') then return 'a control character' end
    local bad = utf8_error(s)
    if bad then return bad end
    scan = not string.find(s, '^[^\t\n\r]*$')
  end
  scan = scan or string.find(s, '\\u', 1, true) ~= nil or dot_after_digit(s)
  for k = 1, #QUOTED do
    if scan then break end
    local a = string.find(s, QUOTED[k], 1, true)
    scan = a ~= nil and string.find(s, QUOTED[k], a + 1, true) ~= nil
  end
  if scan then return exact_error(s) end
  return nil
end

-- The producer message `payload` checked as the nodes will check it: nil and the decoded
-- object, or an error reply.
local function check(payload)
  if #payload > SETTINGS.max_bytes then
    return 'MT_TOO_LARGE event larger than ' .. int(SETTINGS.max_bytes) .. ' bytes'
  end
  if not string.find(payload, '^[ \t\r\n]*{') then
    return 'MT_MALFORMED not a JSON object'
  end
  local why = strict_error(payload)
  if why then return 'MT_MALFORMED not valid JSON: ' .. why end
  cjson.decode_invalid_numbers(false)
  local ok, v = pcall(cjson.decode, payload)
  if not ok or type(v) ~= 'table' then
    return 'MT_MALFORMED not valid JSON: ' .. tostring(v)
  end
  if type(v.event) ~= 'string' then return 'MT_MALFORMED `event` must be a string' end
  if #v.event == 0 or #v.event > 256 then return 'MT_BAD_EVENT_NAME `event` must be a non-empty name of at most 256 bytes' end
  for _, f in ipairs({ 'id', 'created_at' }) do
    if v[f] ~= nil and type(v[f]) ~= 'string' then
      return 'MT_MALFORMED `' .. f .. '` must be a string'
    end
  end
  if v.offset ~= nil or v.epoch ~= nil then
    return 'MT_MALFORMED `offset` and `epoch` are set by the server'
  end
  return nil, v
end

local function publish(keys, args)
  local c, err = channel_of(keys)
  if not c then return redis.error_reply(err) end
  if #args ~= 1 then return redis.error_reply('MT_ARGS give one argument: the event JSON') end
  local payload = args[1]
  local bad, v = check(payload)
  if bad then return redis.error_reply(bad) end
  local h, m = keys[1], keys[2]
  local sec, usec = now()
  local epoch = meta(h, m, sec, usec)
  local offset = redis.call('HINCRBY', m, 'seq', 1)
  local head = '"offset":' .. int(offset) .. ',"epoch":"' .. epoch .. '"'
  if v.id == nil then head = head .. ',"id":"evt_' .. epoch .. '_' .. int(offset) .. '"' end
  if v.created_at == nil then head = head .. ',"created_at":"' .. rfc3339(sec, usec) .. '"' end
  local open = string.find(payload, '{', 1, true)
  local rest = string.sub(payload, open + 1)
  local msg
  if string.find(rest, '^[ \t\r\n]*}') then
    msg = '{' .. head .. rest
  else
    msg = '{' .. head .. ',' .. rest
  end
  local ms = sec * 1000 + math.floor(usec / 1000)
  redis.call('XADD', h, 'MAXLEN', SETTINGS.size, int(offset) .. '-0', 'p', msg, 't', int(ms))
  redis.call('PEXPIRE', h, SETTINGS.ttl_ms)
  redis.call('PEXPIRE', m, SETTINGS.ttl_ms)
  -- On a Redis Cluster nodes SSUBSCRIBE: the shard channel, on the shard of the keys.
  redis.call(SETTINGS.sharded and 'SPUBLISH' or 'PUBLISH', c, msg)
  return { offset, epoch }
end

local function head(keys, args)
  local c, err = channel_of(keys)
  if not c then return redis.error_reply(err) end
  local sec, usec = now()
  local epoch, seq = meta(keys[1], keys[2], sec, usec)
  return { seq, epoch }
end

local function field(entry, name)
  local f = entry[2]
  for k = 1, #f, 2 do
    if f[k] == name then return f[k + 1] end
  end
  return nil
end

-- The lowest offset of the history younger than `cutoff` (ms); head + 1 if none. Offsets
-- in the stream are consecutive, so a binary search by entry ID finds it.
local function first_live(h, head, cutoff)
  local e = redis.call('XRANGE', h, '-', '+', 'COUNT', 1)
  if #e == 0 then return head + 1 end
  local lo = tonumber(string.match(e[1][1], '^(%d+)'))
  if (tonumber(field(e[1], 't')) or 0) >= cutoff then return lo end
  local a, b = lo + 1, head + 1
  while a < b do
    local mid = math.floor((a + b) / 2)
    local r = redis.call('XRANGE', h, int(mid), int(mid))
    if #r == 1 and (tonumber(field(r[1], 't')) or 0) >= cutoff then b = mid else a = mid + 1 end
  end
  return a
end

local function history(keys, args)
  local c, err = channel_of(keys)
  if not c then return redis.error_reply(err) end
  local after, limit = tonumber(args[1]), tonumber(args[2])
  if (args[1] ~= '' and not after) or not limit or limit < 0 then
    return redis.error_reply('MT_ARGS give <after offset or ""> <limit>')
  end
  limit = math.min(limit, SETTINGS.size)
  local sec, usec = now()
  local epoch, seq = meta(keys[1], keys[2], sec, usec)
  local first = first_live(keys[1], seq, sec * 1000 + math.floor(usec / 1000) - SETTINGS.ttl_ms)
  local from
  if after then from = math.max(after + 1, first) else from = math.max(first, seq - limit + 1) end
  local out = {}
  if limit > 0 and from <= seq then
    for _, e in ipairs(redis.call('XRANGE', keys[1], int(from), '+', 'COUNT', limit)) do
      out[#out + 1] = field(e, 'p')
    end
  end
  return { seq, epoch, first, out }
end

-- A node found this channel's history behind what it delivered (a replica promoted without
-- the last writes): if the epoch is still ARGV[1], forget it, so the next call starts a new
-- one and offsets never repeat within an epoch.
local function reepoch(keys, args)
  local c, err = channel_of(keys)
  if not c then return redis.error_reply(err) end
  if redis.call('HGET', keys[2], 'epoch') ~= args[1] then return 0 end
  redis.call('DEL', keys[1], keys[2])
  return 1
end

local function settings()
  return { SETTINGS.size, SETTINGS.ttl_ms, SETTINGS.max_bytes }
end

redis.register_function('mt_publish', publish)
redis.register_function('mt_head', head)
redis.register_function('mt_history', history)
redis.register_function('mt_reepoch', reepoch)
redis.register_function { function_name = 'mt_settings', callback = settings, flags = { 'no-writes' } }
