#!/usr/bin/env python3
"""A TCP proxy that cuts one connection halfway (the registry tests' flaky network).

  cut_proxy.py TARGET_PORT CUT_AFTER_BYTES PORT_FILE STATS_FILE [exit]

Listens on a free port of 127.0.0.1 (written to PORT_FILE) and forwards each
connection to 127.0.0.1:TARGET_PORT (TLS passes through untouched). The first
connection whose server-to-client bytes pass CUT_AFTER_BYTES is closed there,
once. STATS_FILE always holds "<bytes server->client> <connections> <cuts>".
Runs until killed; with "exit", it exits right after the cut (the network
is gone for good: the client's retries fail too).
"""
import os, socket, sys, threading

target, cut_after, port_file, stats_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
exit_after_cut = len(sys.argv) > 5 and sys.argv[5] == "exit"
lock = threading.Lock()
state = {"bytes": 0, "conns": 0, "cuts": 0}

def save():
    with open(stats_file + ".tmp", "w") as f:
        f.write("%d %d %d\n" % (state["bytes"], state["conns"], state["cuts"]))
    import os
    os.replace(stats_file + ".tmp", stats_file)

def pump(src, dst, downstream, conn_bytes):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if downstream:
                with lock:
                    if state["cuts"] == 0 and conn_bytes[0] + len(data) > cut_after:
                        keep = cut_after - conn_bytes[0]
                        if keep > 0:
                            dst.sendall(data[:keep])
                            state["bytes"] += keep
                        state["cuts"] += 1
                        save()
                        if exit_after_cut:
                            os._exit(0)
                        raise ConnectionResetError("cut")
                    conn_bytes[0] += len(data)
                    state["bytes"] += len(data)
                    save()
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def handle(client):
    try:
        server = socket.create_connection(("127.0.0.1", target))
    except OSError:
        client.close()
        return
    with lock:
        state["conns"] += 1
        save()
    conn_bytes = [0]
    t = threading.Thread(target=pump, args=(client, server, False, conn_bytes), daemon=True)
    t.start()
    pump(server, client, True, conn_bytes)
    t.join()
    client.close()
    server.close()

ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(16)
with lock:
    save()
with open(port_file + ".tmp", "w") as f:
    f.write(str(ls.getsockname()[1]))
import os
os.replace(port_file + ".tmp", port_file)
while True:
    c, _ = ls.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
