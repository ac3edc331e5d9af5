-- tshark tap for shadowtape's packet importer (capture/packets.py): prints the HTTP/1.1 and
-- HTTP/2 fields Wireshark's dissectors found, with their exact bytes, and nothing else.
--
-- Why a tap and not -T fields/json/pdml: -T fields prints strings re-spelled (non-ASCII bytes
-- become U+FFFD, a binary body stops at its first NUL) and merges the fields of two pipelined
-- messages in one frame; pdml/json carry the bytes but are 10x the volume to parse. Here each
-- field's own bytes (TvbRange:raw) are written as they are, after a short text line that says
-- what they are, in tree order, so two messages in one frame stay apart.
--
-- Output, one record per line, blobs following their line (lengths are in the line):
--   S <stream> <src> <sport> <dst> <dport>        first time a TCP stream is seen
--   E <frames>                                    the end: how many TCP frames were read
--   P <frame> <stream> <dir>                      a frame with TCP payload and no HTTP in it
--   F <frame> <stream> <dir> <tls> <time_us> <first_frame> <first_us> <items...>
--       items in tree order, code+length for a blob that follows, code+value for a number:
--       X an HTTP/1 message's header block (X0: data tshark could not read as a message)
--       B its body as tshark de-chunked it, K a chunk, Z the bytes after the header block
--       Y an HTTP/2 frame, whole; n/w an h2 header name/value as decoded from HPACK;
--       c the number of headers tshark decoded in the frame's header block
--       L packets before this frame were not captured (a gap in the stream)
-- dir is 0 when the frame goes the way of the stream's first frame, 1 the other way.
-- first_frame/first_us: the first TCP segment (or TLS record) of a message reassembled from
-- several, so a request's first byte is timed from the packet that carried it.

local BLOB = {
    ["http.file_data"] = "B",
    ["http.chunk_data"] = "K",
    ["http2.header.name"] = "n",
    ["http2.header.value"] = "w",
}
-- A header block's count tells whether tshark could decompress it (HPACK needs the
-- connection's earlier blocks): no count, no headers to trust.
local NUMBER = {
    ["http2.header.count"] = "c",
}
local LINE = { ["http.request.line"] = true, ["http.response.line"] = true }
local SEGMENT = { ["tcp.segment"] = true, ["tls.segment"] = true }
-- A frame after packets the capture lost (kernel or interface drops): pairing resyncs there.
local GAP = "tcp.analysis.lost_segment"

-- Field extractors are what make tshark build these fields into the tree; all_field_infos()
-- then returns exactly them, in tree order, for each frame.
local f_stream = Field.new("tcp.stream")
local f_len = Field.new("tcp.len")
for name, _ in pairs(BLOB) do Field.new(name) end
for name, _ in pairs(NUMBER) do Field.new(name) end
for name, _ in pairs(LINE) do Field.new(name) end
for name, _ in pairs(SEGMENT) do Field.new(name) end
Field.new("http")
Field.new("http2")
Field.new("tls")
Field.new(GAP)

local out = io.stdout
local format = string.format
local find = string.find
local concat = table.concat
local streams = {}
-- Times of recent payload frames, to time a reassembled message from its first segment.
local times = {}
local TIMES_KEPT = 500000
local oldest = 1

-- An HTTP/1 message's item covers its start line, header lines and (for most) its body; the
-- header block is written whole (its exact bytes), and the body as tshark de-chunked it (B),
-- as chunks (K, when the body has a content coding and tshark left it alone) or as the bytes
-- after the header block (Z) when tshark gave neither.
local function finish_message(msg, items, blobs)
    local tvb, off, len = msg.tvb, msg.off, msg.len
    local head = tvb:raw(off, len < 8192 and len or 8192)
    local eol = find(head, "\n", 1, true)
    if eol == nil and len > 8192 then
        head = tvb:raw(off, len)
        eol = find(head, "\n", 1, true)
    end
    if eol == nil or (msg.lines == 0 and msg.kind == nil) then
        items[msg.at] = "X0"
        return
    end
    local hdr = eol + msg.lines
    local blank = tvb:raw(off + hdr, (len - hdr) >= 2 and 2 or (len - hdr))
    if blank == "\r\n" then hdr = hdr + 2 elseif blank:sub(1, 1) == "\n" then hdr = hdr + 1 end
    local header = tvb:raw(off, hdr)
    items[msg.at] = "X" .. hdr
    blobs[msg.blob_at] = header
    if not msg.body and len > hdr then
        local rest = tvb:raw(off + hdr, len - hdr)
        items[#items + 1] = "Z" .. #rest
        blobs[#blobs + 1] = rest
    end
end

local tap = Listener.new("frame", "tcp", false)
local frames = 0

function tap.draw()
    out:write("E ", frames, "\n")
    out:flush()
end

function tap.packet(pinfo, tvb)
    frames = frames + 1
    local stream_fi = f_stream()
    if stream_fi == nil then return end
    local stream = stream_fi.value
    local num = pinfo.number
    local sport, dport = pinfo.src_port, pinfo.dst_port
    local first = streams[stream]
    if first == nil then
        first = { sport, tostring(pinfo.net_src) }
        streams[stream] = first
        out:write("S ", stream, " ", first[2], " ", sport, " ", tostring(pinfo.net_dst), " ",
            dport, "\n")
    end
    local dir = 1
    if sport == first[1] and (sport ~= dport or tostring(pinfo.net_src) == first[2]) then
        dir = 0
    end
    local len_fi = f_len()
    local payload = len_fi ~= nil and len_fi.value > 0
    local now = pinfo.abs_ts
    if payload then
        times[num] = now
        if num - oldest > TIMES_KEPT then
            for i = oldest, num - TIMES_KEPT do times[i] = nil end
            oldest = num - TIMES_KEPT + 1
        end
    end
    local items, blobs = {}, {}
    local tls, first_frame = 0, num
    local msg = nil
    for _, fi in ipairs({ all_field_infos() }) do
        local name = fi.name
        if LINE[name] then
            if msg ~= nil then
                msg.lines = msg.lines + fi.len
                msg.kind = name
            end
        else
            local code = BLOB[name]
            if code ~= nil then
                local raw = fi.range and fi.range:raw() or ""
                items[#items + 1] = code .. #raw
                blobs[#blobs + 1] = raw
                if msg ~= nil and (code == "B" or code == "K") then msg.body = true end
            else
                code = NUMBER[name]
                if code ~= nil then
                    items[#items + 1] = code .. tostring(fi.value)
                elseif name == "http" then
                    if msg ~= nil then finish_message(msg, items, blobs) end
                    local range = fi.range
                    items[#items + 1] = "X"
                    blobs[#blobs + 1] = ""
                    -- range:tvb() is a new Tvb holding just the range, so offsets start at 0.
                    msg = { tvb = range:tvb(), off = 0, len = range:len(),
                            lines = 0, at = #items, blob_at = #blobs }
                elseif name == "http2" then
                    -- the whole frame as sent: DATA payloads as they were on the wire
                    -- (http2.data.data is the decompressed body when it has a coding)
                    local raw = fi.range and fi.range:raw() or ""
                    items[#items + 1] = "Y" .. #raw
                    blobs[#blobs + 1] = raw
                elseif SEGMENT[name] then
                    local seg = fi.value
                    if seg < first_frame then first_frame = seg end
                elseif name == "tls" then
                    tls = 1
                end
            end
        end
    end
    if msg ~= nil then finish_message(msg, items, blobs) end
    if #items == 0 then
        if payload then out:write("P ", num, " ", stream, " ", dir, "\n") end
        return
    end
    out:write("F ", num, " ", stream, " ", dir, " ", tls, " ", format("%.0f", now * 1000000),
        " ", first_frame, " ", format("%.0f", (times[first_frame] or now) * 1000000), " ",
        concat(items, " "), "\n", concat(blobs))
end
