#!/usr/bin/env python3
"""Loopback peers for tests/docker.sh (the image has no shell, so the test
drives it from outside). Every mode is bounded in time and stops by itself.

  docker_peer.py serve NAME PORTFILE      echo server on 127.0.0.1:0 that
                                          answers each line with NAME:line;
                                          writes its port, exits after 600 s
  docker_peer.py ask ADDR                 one connection: prints the backend's
                                          NAME, exit 1 on any failure
  docker_peer.py hold ADDR READYFILE      one connection held open, a round
                                          trip every 100 ms until the LB closes
                                          it; prints "rounds=N last_ok=T
                                          closed=T" (epoch seconds), at most 120 s
"""
import socket
import sys
import threading
import time


def serve(name, portfile):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
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


def connect(addr):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


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


def hold(addr, readyfile):
    s = connect(addr)
    f = s.makefile("r")
    round_trip(s, f, "r0")
    open(readyfile, "w").close()
    rounds, last_ok, end = 1, time.time(), time.time() + 120
    while time.time() < end:
        time.sleep(0.1)
        try:
            round_trip(s, f, "r%d" % rounds)
        except OSError:
            break
        rounds += 1
        last_ok = time.time()
    print("rounds=%d last_ok=%.3f closed=%.3f" % (rounds, last_ok, time.time()))
    return 0


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif mode == "ask":
        sys.exit(ask(sys.argv[2]))
    elif mode == "hold":
        sys.exit(hold(sys.argv[2], sys.argv[3]))
    else:
        sys.exit("unknown mode " + mode)
