-- wrk script of the proxy benchmark (tests/benches/proxy.rs). wrk has no --connect-to: this
-- connects to $WRK_CONNECT_TO (IP:PORT) instead of resolving the URL's host, so that the
-- URL's host (bench.test) stays the TLS SNI and the Host header.
local target = os.getenv("WRK_CONNECT_TO")
if target == nil then
    error("WRK_CONNECT_TO (IP:PORT) is not set")
end

function wrk.resolve(host, service)
    local ip, port = target:match("^(.+):(%d+)$")
    wrk.addrs = wrk.lookup(ip, port)
end
