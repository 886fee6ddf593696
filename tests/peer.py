#!/usr/bin/env python3
"""Test peers for tests/docker.sh and tests/ha.sh (the image has no shell,
so the tests drive it from outside). Every mode is bounded in time and stops
by itself; targets are loopback or the tests' own network namespaces.

  peer.py serve NAME PORTFILE [HOST]      echo server on HOST:0 (default
                                          127.0.0.1) that answers each line
                                          with NAME:line; writes its port,
                                          exits after 600 s
  peer.py ask ADDR                        one connection: prints the backend's
                                          NAME, exit 1 on any failure
  peer.py watch ADDR SECONDS STOPFILE     a new connection every 50 ms (each
                                          given 300 ms) until STOPFILE exists
                                          or SECONDS pass; prints one line per
                                          attempt: "EPOCH NAME" or "EPOCH -"
  peer.py hold ADDR READYFILE [STOPFILE]  one connection held open, a round
                                          trip every 100 ms until the LB closes
                                          it (or STOPFILE exists); prints
                                          "rounds=N last_ok=T closed=T" (epoch
                                          seconds; closed=0 when it was not),
                                          at most 120 s
"""
import socket
import sys
import threading
import time


def serve(name, portfile, host="127.0.0.1"):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(128)
    srv.settimeout(1.0)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    # Renamed into place: the reader never sees a half-written port.
    import os

    os.rename(portfile + ".tmp", portfile)
    end = time.time() + 600

    def handle(c):
        c.settimeout(130)
        buf = b""
        try:
            while True:
                data = c.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    c.sendall(name.encode() + b":" + line + b"\n")
        except OSError:
            return
        finally:
            c.close()

    while time.time() < end:
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def connect(addr, timeout=5):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def round_trip(s, f, word):
    s.sendall(word.encode() + b"\n")
    line = f.readline()
    if not line.endswith("\n"):
        raise OSError("closed")
    name, _, echoed = line.rstrip("\n").partition(":")
    if echoed != word:
        raise OSError("bad echo: %r" % line)
    return name


def ask(addr):
    try:
        s = connect(addr)
        f = s.makefile("r")
        print(round_trip(s, f, "hello"))
        return 0
    except OSError as e:
        print("failed: %s" % e, file=sys.stderr)
        return 1


def watch(addr, seconds, stopfile):
    import os

    end = time.time() + float(seconds)
    while time.time() < end and not os.path.exists(stopfile):
        t = time.time()
        try:
            s = connect(addr, timeout=0.3)
            f = s.makefile("r")
            name = round_trip(s, f, "w")
            s.close()
        except OSError:
            name = "-"
        print("%.3f %s" % (t, name), flush=True)
        left = 0.05 - (time.time() - t)
        if left > 0:
            time.sleep(left)
    return 0


def hold(addr, readyfile, stopfile=None):
    import os

    s = connect(addr)
    f = s.makefile("r")
    round_trip(s, f, "r0")
    open(readyfile, "w").close()
    rounds, last_ok, end = 1, time.time(), time.time() + 120
    closed = 0.0
    while time.time() < end:
        if stopfile and os.path.exists(stopfile):
            break
        time.sleep(0.1)
        try:
            round_trip(s, f, "r%d" % rounds)
        except OSError:
            closed = time.time()
            break
        rounds += 1
        last_ok = time.time()
    if not stopfile and not closed:
        closed = time.time()
    print("rounds=%d last_ok=%.3f closed=%.3f" % (rounds, last_ok, closed))
    return 0


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(*sys.argv[2:5])
    elif mode == "watch":
        sys.exit(watch(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif mode == "ask":
        sys.exit(ask(sys.argv[2]))
    elif mode == "hold":
        sys.exit(hold(*sys.argv[2:5]))
    else:
        sys.exit("unknown mode " + mode)
