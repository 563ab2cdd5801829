-- pktgen-DPDK script: dialtone phones' UDP traffic through the gateway, both directions.
--
-- The same traffic as the lab's dialtone-gen and perf/trex/dialtone_phones.py, for bare metal with
-- pktgen's range mode: 64-byte UDP frames from phones of one class, each from a port inside its
-- own port block (port 0, facing the gateway's LAN), and from the far end to the phones' public
-- address and port (port 1, facing the WAN).
--
-- Port blocks (config/src/portblock.rs): B = ports_per_phone, R = max(1024, B),
-- per_ip = (65536 - R) // B, phone at offset o of the LAN pool:
--   public = public_base + o // per_ip ;  port_lo = R + (o % per_ip) * B
--
-- Range mode steps every field once per packet, in lock step. Outbound, the source address steps
-- by 1 over the phones and the source port by B over one public address's blocks: packet n comes
-- from offset n % phones with port R + (n % per_ip) * B + flow, which is that phone's block only
-- when phones is a multiple of per_ip -- so the phone count is rounded up to one (1008 phones
-- for 64-port blocks; lease them all first, in offset order). Inbound, the destination steps over
-- the public addresses in use and the port over the blocks: every (address, block) pair names a
-- leased phone. `flow` (0..B-1) picks the port inside each block; run the script once per flow
-- value for several ports per phone.
--
-- In pktgen:  set the table `dialtone` before loading to override defaults, e.g.
--   dialtone = { phones = 2016, ports_per_phone = 64, rate = 50 }; dofile("dialtone_phones.lua")
-- Outside pktgen:  lua5.4 dialtone_phones.lua --list phones=1008 ports_per_phone=64 ...
--   prints every flow of one range period, one "direction class offset private public port" line
--   each; the test suite checks them against the Rust port-block function.

local defaults = {
  phones = 1000,
  flow = 0,
  ports_per_phone = 64,
  lan_pool = "100.64.128.0/17",
  public_pool = "198.51.100.0/26",
  class_index = 0,
  far = "203.0.113.10",
  far_port = 9,
  gateway_lan_mac = "02:00:00:00:00:01",
  gateway_wan_mac = "02:00:00:00:01:01",
  phone_mac = "02:64:01:00:00:00",
  far_mac = "02:00:00:00:01:fe",
  rate = 10,
}

local function ip_to_int(text)
  local a, b, c, d = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  assert(a, "not an IPv4 address: " .. tostring(text))
  return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
end

local function int_to_ip(n)
  return string.format("%d.%d.%d.%d", (n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255)
end

local function pool(cidr)
  local address, len = cidr:match("^([%d%.]+)/(%d+)$")
  assert(address, "not a CIDR pool: " .. tostring(cidr))
  return ip_to_int(address), 1 << (32 - tonumber(len))
end

-- The class's plan and the traffic's ranges.
local function plan(s)
  local b = s.ports_per_phone
  assert(b >= 16 and b <= 32768 and (b & (b - 1)) == 0, "ports_per_phone must be a power of two in 16..32768")
  assert(s.flow >= 0 and s.flow < b, "flow must be in 0..ports_per_phone-1")
  local reserved = math.max(1024, b)
  local per_ip = (65536 - reserved) // b
  local lan_base, lan_size = pool(s.lan_pool)
  local public_base, public_size = pool(s.public_pool)
  local phones = ((s.phones + per_ip - 1) // per_ip) * per_ip
  local addresses = phones // per_ip
  assert(phones <= lan_size, "the LAN pool holds fewer phones than " .. phones)
  assert(addresses <= public_size, "the public pool holds fewer addresses than " .. addresses)
  return {
    reserved = reserved, per_ip = per_ip, lan_base = lan_base, public_base = public_base,
    phones = phones, addresses = addresses,
    port_min = reserved + s.flow, port_max = reserved + (per_ip - 1) * b + s.flow,
  }
end

-- One range field as pktgen steps it: start = min, value += inc, past max back to min.
local function field(min, inc, count, n)
  return min + (n % count) * inc
end

local function list(s)
  local p = plan(s)
  for n = 0, p.phones - 1 do
    local offset = field(0, 1, p.phones, n)
    local port = field(p.port_min, s.ports_per_phone, p.per_ip, n)
    local public = p.public_base + offset // p.per_ip
    print("outbound", s.class_index, offset, int_to_ip(p.lan_base + offset), int_to_ip(public), port)
  end
  for n = 0, p.addresses * p.per_ip - 1 do
    local address_index = field(0, 1, p.addresses, n)
    local port = field(p.port_min, s.ports_per_phone, p.per_ip, n)
    local offset = address_index * p.per_ip + (port - p.reserved) // s.ports_per_phone
    print("inbound", s.class_index, offset, int_to_ip(p.lan_base + offset),
          int_to_ip(p.public_base + address_index), port)
  end
end

local function configure(s)
  local p = plan(s)
  local out, into = "0", "1"
  printf("dialtone phones: %d phones (%d public addresses x %d blocks), port %d in each block\n",
         p.phones, p.addresses, p.per_ip, s.flow)

  -- Outbound: phones -> far end, on the port facing the gateway's LAN.
  pktgen.range.dst_mac(out, "start", s.gateway_lan_mac)
  pktgen.range.src_mac(out, "start", s.phone_mac)
  pktgen.range.src_ip(out, "start", int_to_ip(p.lan_base))
  pktgen.range.src_ip(out, "inc", "0.0.0.1")
  pktgen.range.src_ip(out, "min", int_to_ip(p.lan_base))
  pktgen.range.src_ip(out, "max", int_to_ip(p.lan_base + p.phones - 1))
  pktgen.range.dst_ip(out, "start", s.far)
  pktgen.range.dst_ip(out, "inc", "0.0.0.0")
  pktgen.range.dst_ip(out, "min", s.far)
  pktgen.range.dst_ip(out, "max", s.far)
  pktgen.range.src_port(out, "start", p.port_min)
  pktgen.range.src_port(out, "inc", s.ports_per_phone)
  pktgen.range.src_port(out, "min", p.port_min)
  pktgen.range.src_port(out, "max", p.port_max)
  pktgen.range.dst_port(out, "start", s.far_port)
  pktgen.range.dst_port(out, "inc", 0)
  pktgen.range.dst_port(out, "min", s.far_port)
  pktgen.range.dst_port(out, "max", s.far_port)

  -- Inbound: far end -> phones' public address and port, on the port facing the WAN.
  pktgen.range.dst_mac(into, "start", s.gateway_wan_mac)
  pktgen.range.src_mac(into, "start", s.far_mac)
  pktgen.range.src_ip(into, "start", s.far)
  pktgen.range.src_ip(into, "inc", "0.0.0.0")
  pktgen.range.src_ip(into, "min", s.far)
  pktgen.range.src_ip(into, "max", s.far)
  pktgen.range.dst_ip(into, "start", int_to_ip(p.public_base))
  pktgen.range.dst_ip(into, "inc", "0.0.0.1")
  pktgen.range.dst_ip(into, "min", int_to_ip(p.public_base))
  pktgen.range.dst_ip(into, "max", int_to_ip(p.public_base + p.addresses - 1))
  pktgen.range.dst_port(into, "start", p.port_min)
  pktgen.range.dst_port(into, "inc", s.ports_per_phone)
  pktgen.range.dst_port(into, "min", p.port_min)
  pktgen.range.dst_port(into, "max", p.port_max)
  pktgen.range.src_port(into, "start", s.far_port)
  pktgen.range.src_port(into, "inc", 0)
  pktgen.range.src_port(into, "min", s.far_port)
  pktgen.range.src_port(into, "max", s.far_port)

  for _, port in ipairs({ out, into }) do
    pktgen.range.ip_proto(port, "udp")
    pktgen.range.ttl(port, "start", 64)
    pktgen.range.ttl(port, "inc", 0)
    pktgen.range.ttl(port, "min", 64)
    pktgen.range.ttl(port, "max", 64)
    pktgen.range.pkt_size(port, "start", 64)
    pktgen.range.pkt_size(port, "inc", 0)
    pktgen.range.pkt_size(port, "min", 64)
    pktgen.range.pkt_size(port, "max", 64)
  end
  pktgen.set("all", "rate", s.rate)
  pktgen.set_range("all", "on")
end

local function settings(overrides)
  local s = {}
  for k, v in pairs(defaults) do
    s[k] = v
  end
  for k, v in pairs(overrides or {}) do
    assert(defaults[k] ~= nil, "unknown setting " .. tostring(k))
    s[k] = (type(defaults[k]) == "number") and assert(tonumber(v), k .. " must be a number") or v
  end
  return s
end

if rawget(_G, "pktgen") then
  configure(settings(rawget(_G, "dialtone")))
elseif arg and arg[1] == "--list" then
  local overrides = {}
  for i = 2, #arg do
    local k, v = arg[i]:match("^([%w_]+)=(.+)$")
    assert(k, "arguments are key=value: " .. arg[i])
    overrides[k] = v
  end
  list(settings(overrides))
else
  io.stderr:write("run inside pktgen-DPDK, or: lua5.4 dialtone_phones.lua --list key=value ...\n")
  os.exit(2)
end
