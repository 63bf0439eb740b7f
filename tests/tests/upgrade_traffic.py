# Traffic for an upgrade, to a server echoing what it gets as it gets it (e2e-app's stream port):
# `ADDRESS PORT STOP`: one long-lived stream (a line echoed every 50 ms on one connection) and a
# new connection every 50 ms, until the file STOP exists; prints what it counted. Any error is
# recorded, nothing is retried.
import json, os, socket, sys, threading, time
addr, stop = (sys.argv[1], int(sys.argv[2])), sys.argv[3]
out = {"echoes": 0, "stream_errors": [], "calls": 0, "call_errors": [], "slowest_echo_ms": 0, "slowest_call_ms": 0}
def slowest(key, start):
    out[key] = max(out[key], round((time.monotonic() - start) * 1000))
def stream():
    try:
        s = socket.create_connection(addr, timeout=5)
        f = s.makefile("rb")
        i = 0
        while not os.path.exists(stop):
            line = ("stream %d\n" % i).encode()
            start = time.monotonic()
            s.sendall(line)
            got = f.readline()
            slowest("slowest_echo_ms", start)
            if got != line:
                out["stream_errors"].append("sent %r, got %r" % (line, got))
                return
            out["echoes"] += 1
            i += 1
            time.sleep(0.05)
        s.close()
    except Exception as e:
        out["stream_errors"].append(repr(e))
def calls():
    i = 0
    while not os.path.exists(stop):
        start = time.monotonic()
        try:
            with socket.create_connection(addr, timeout=5) as s:
                line = ("call %d\n" % i).encode()
                s.sendall(line)
                got = s.makefile("rb").readline()
                if got != line:
                    out["call_errors"].append("%d: got %r" % (i, got))
                else:
                    out["calls"] += 1
                    slowest("slowest_call_ms", start)
        except Exception as e:
            out["call_errors"].append("%d: %r" % (i, e))
        i += 1
        time.sleep(0.05)
threads = [threading.Thread(target=f) for f in (stream, calls)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
