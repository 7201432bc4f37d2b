#!/usr/bin/env python3
"""A 'held' SMTP peer for benchmarks: accepts TCP connections and never says a word, so
every delivery attempt waits for its banner timeout and the mail stays queued.

  held_sink.py PORT
"""
import socket
import sys
import threading

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4096)
held = []
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    held.append(conn)
