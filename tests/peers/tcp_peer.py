"""A small TCP real server for the proxy tests.

  tcp_peer.py NAME PORT [--silent]

On each connection it first sends its NAME and a newline, then echoes whatever it
receives, and half-closes when the client does. --silent accepts connections and never
says anything (a server that is up at the TCP level but dead above it).
"""

import socket
import sys
import threading


def serve(conn, name, silent):
    with conn:
        if silent:
            while conn.recv(65536):
                pass
            return
        conn.sendall(name.encode() + b"\n")
        while True:
            data = conn.recv(65536)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)


def main():
    name, port = sys.argv[1], int(sys.argv[2])
    silent = "--silent" in sys.argv
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(512)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn, name, silent), daemon=True).start()


if __name__ == "__main__":
    main()
