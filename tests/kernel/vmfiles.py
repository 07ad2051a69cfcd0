"""vmfiles.py - what the kernel test's host-side helpers (mirror.py, raid.py)
share: whole files, sector patterns whose every sector names itself, and
writing a file through an NBD export with libnbd (1 MiB per request, then a
flush)."""
SECTOR = 512


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def labelled(tag, count, rng):
    """`count` sectors, each "TAG:NNNNNN:" then random bytes from `rng`."""
    out = bytearray()
    for s in range(count):
        lab = f"{tag}:{s:06d}:".encode()
        out += lab + rng.randbytes(SECTOR - len(lab))
    return bytes(out)


def connect(sock, export):
    import nbd  # Debian's python3-libnbd (/usr/bin/python3)
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h


def write_export(h, data):
    step = 1 << 20
    for off in range(0, len(data), step):
        h.pwrite(data[off:off + step], off)
    h.flush()
