# Run: python3 bench/compare/outbound_vs_wasmtime.py "$PWD" (after the release build
# and the components; needs `wasmtime` on PATH).
# Compare 1,000 aggregate calls (10 at a time, 5 upstreams each): Wharf's
# pooled client vs wasmtime serve 48 (a new connection per request).
import http.server, socketserver, threading, subprocess, time, urllib.request, sys, os, statistics, socket
from concurrent.futures import ThreadPoolExecutor

class Counting(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    accepted = 0
    def process_request(self, request, client_address):
        Counting.accepted += 1
        super().process_request(request, client_address)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536
    disable_nagle_algorithm = True
    def do_GET(self):
        body = b"ok"
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

servers = []
for _ in range(5):
    srv = Counting(("127.0.0.1", 0), Handler); servers.append(srv)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
urls = ";".join(f"http://127.0.0.1:{s.server_address[1]}/ok" for s in servers)
root = sys.argv[1]
agg = f"{root}/target/components/wasm32-wasip2/release/aggregate.wasm"

def wait(port):
    for _ in range(2400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/aggregate", timeout=5).read(); return
        except Exception: time.sleep(0.05)
    raise SystemExit("server did not come up")

def run(name, cmd, port):
    env = dict(os.environ); env.pop("RUST_BACKTRACE", None); env["RUST_LOG"] = "warn"
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait(port)
        Counting.accepted = 0
        def one(_):
            t = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/aggregate", timeout=10) as r:
                assert r.status == 200; r.read()
            return time.perf_counter() - t
        with ThreadPoolExecutor(10) as ex:
            lat = sorted(ex.map(one, range(1000)))
        print(f"{name}: 1000 aggregate calls (5000 upstream requests): {Counting.accepted} upstream connections, median {lat[500]*1000:.2f} ms, p99 {lat[990]*1000:.2f} ms")
    finally:
        p.terminate(); p.wait()

port = free_port()
manifest = f"{root}/target/aggcmp.toml"
open(manifest, "w").write(f'''[server]
listen = "127.0.0.1:{port}"
admin_listen = "off"
key_value = "memory"
[[route]]
path = "/aggregate"
component = "aggregate"
[component.aggregate]
source = "{agg}"
config = {{ urls = "{urls}" }}
allowed_outbound_hosts = ["http://127.0.0.1:*"]
''')
run("wharf (pooled)", [f"{root}/target/release/wharf", "up", "--manifest", manifest], port)
port2 = free_port()
run("wasmtime serve 48", ["wasmtime", "serve", "-Scli", "-Sconfig", f"-Sconfig-var=urls={urls}", "--addr", f"127.0.0.1:{port2}", agg], port2)
