#!/usr/bin/env python3
"""Upload sink for bench/run.sh scenario 7 (large bodies).

usage: upload_sink.py HOST PORT SAVE_DIR

An HTTP/1.1 server that reads every request body to its last byte (Content-Length or chunked)
and only then answers 204 No Content, on a kept-alive connection. The body is dropped (one
recv_into a 1 MiB buffer per read: about the cheapest a reader can be, so the sink is not what
limits a proxy in front of it), except for a path ending in "-check.bin": that body is written
to SAVE_DIR/<last path segment>, for run.sh to compare with the file it sent. A body cut short
(the client or proxy closed early) gets no answer; a request it cannot parse gets 400 and a close.
One thread per connection (recv_into releases the GIL). Logs nothing but errors.
"""
import os
import socket
import sys
import threading

BUF = 1 << 20


class Closed(Exception):
    pass


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.pending = bytearray()  # bytes received, not consumed yet
        self.buf = bytearray(BUF)
        self.view = memoryview(self.buf)

    def fill(self):
        n = self.sock.recv_into(self.view, BUF)
        if n == 0:
            raise Closed()
        self.pending += self.view[:n]

    def line(self, limit=65536):
        while True:
            i = self.pending.find(b"\r\n")
            if i >= 0:
                out = bytes(self.pending[:i])
                del self.pending[: i + 2]
                return out
            if len(self.pending) > limit:
                raise ValueError("line too long")
            self.fill()

    def body(self, n, out):
        """Consume n body bytes; write them to out (a file) when given."""
        take = min(n, len(self.pending))
        if take:
            if out:
                out.write(self.pending[:take])
            del self.pending[:take]
            n -= take
        while n > 0:
            r = self.sock.recv_into(self.view, min(BUF, n))
            if r == 0:
                raise Closed()
            if out:
                out.write(self.view[:r])
            n -= r


def serve(sock, save_dir):
    c = Conn(sock)
    try:
        while True:
            try:
                request_line = c.line()
            except (Closed, ConnectionResetError):
                return  # the client closed (or reset) a kept-alive connection between requests
            if not request_line:
                continue  # stray CRLF between requests
            parts = request_line.split(b" ")
            if len(parts) != 3:
                raise ValueError("bad request line")
            target = parts[1].decode("latin-1")
            headers = {}
            while True:
                h = c.line()
                if not h:
                    break
                k, _, v = h.partition(b":")
                headers[k.strip().lower()] = v.strip()
            te = headers.get(b"transfer-encoding", b"").lower()
            if headers.get(b"expect", b"").lower() == b"100-continue":
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            name = target.split("?")[0].rsplit("/", 1)[-1]
            out = open(os.path.join(save_dir, name), "wb") if name.endswith("-check.bin") else None
            received = 0
            try:
                if te:
                    if te != b"chunked":
                        raise ValueError("unsupported transfer-encoding")
                    while True:
                        size = int(c.line().split(b";")[0], 16)
                        if size == 0:
                            while c.line():  # trailers, up to the empty line
                                pass
                            break
                        c.body(size, out)
                        received += size
                        if c.line() != b"":
                            raise ValueError("bad chunk end")
                else:
                    n = int(headers.get(b"content-length", b"0"))
                    c.body(n, out)
                    received = n
            finally:
                if out:
                    out.close()
            close = headers.get(b"connection", b"").lower() == b"close" or parts[2] == b"HTTP/1.0"
            sock.sendall(b"HTTP/1.1 204 No Content\r\nX-Received: %d\r\n%s\r\n"
                         % (received, b"Connection: close\r\n" if close else b""))
            if close:
                return
    except Closed:
        return
    except (ValueError, OSError) as e:
        try:
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass
        print("upload_sink: %s" % e, file=sys.stderr, flush=True)
    finally:
        sock.close()


def main():
    host, port, save_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(256)
    print("upload sink listening on %s:%d" % (host, port), flush=True)
    while True:
        s, _ = srv.accept()
        threading.Thread(target=serve, args=(s, save_dir), daemon=True).start()


if __name__ == "__main__":
    main()
