"""The bits of the NBD wire protocol that raw-socket probes share
(tests/protocol/limits_probe.py, zero_copy_stall.sh): exact reads and a
fixed-newstyle handshake that enters transmission with OPT_GO."""
import socket
import struct

NBDMAGIC, IHAVEOPT = 0x4E42444D41474943, 0x49484156454F5054
OPT_GO, REP_ACK, REP_INFO = 7, 1, 3
REQ_MAGIC, SIMPLE_MAGIC = 0x25609513, 0x67446698


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk
    return bytes(buf)


def connect_go(path, export, rcvbuf=None):
    """A unix-socket connection in transmission on `export`; returns (socket, size)."""
    s = socket.socket(socket.AF_UNIX)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(path)
    magic, opt, _flags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT:
        raise RuntimeError("not an NBD newstyle server")
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    name = export.encode()
    payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(payload)) + payload)
    size = None
    while True:
        _m, _o, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        data = recv_exact(s, length)
        if rtype == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
            size = struct.unpack(">Q", data[2:10])[0]
        elif rtype == REP_ACK:
            return s, size
        else:
            raise RuntimeError(f"GO failed: reply type {rtype:#x}")
