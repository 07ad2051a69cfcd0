#!/usr/bin/python3
"""logwrites.py - host side of the kernel test's log-writes check (run.sh).

  logwrites.py SOCKET EXPORT DMNBD CONTROL DEVICE OP...

runs the sequence OP... (run.sh's LW_SEQ, the one the guest ran on the
kernel's dm-log-writes) against dmnbd's log-writes export EXPORT through
libnbd; marks go to DEVICE with "DMNBD --control CONTROL message DEVICE 0 mark
NAME". Each step is printed as "OP ok" or "OP <error>"; exit 0 only if every
step is ok.

  w:OFF:LEN:BYTE    write LEN bytes of BYTE at OFF
  fua:OFF:LEN:BYTE  the same with NBD_CMD_FLAG_FUA (guest: one REQ_FUA write)
  flush             NBD_CMD_FLUSH (guest: fsync, one empty flush)
  discard:OFF:LEN   NBD_CMD_TRIM (guest: BLKDISCARD)
  mark:NAME         a mark
"""
import subprocess
import sys

import nbd

sock, export, dmnbd, control, device = sys.argv[1:6]
h = nbd.NBD()
h.set_export_name(export)
h.connect_unix(sock)
bad = 0
for op in sys.argv[6:]:
    k, *a = op.split(":")
    try:
        if k in ("w", "fua"):
            h.pwrite(bytes([int(a[2], 0)]) * int(a[1], 0), int(a[0], 0),
                     nbd.CMD_FLAG_FUA if k == "fua" else 0)
        elif k == "flush":
            h.flush()
        elif k == "discard":
            h.trim(int(a[1], 0), int(a[0], 0))
        elif k == "mark":
            r = subprocess.run([dmnbd, "--control", control, "message", device, "0", "mark", a[0]],
                               capture_output=True, text=True, timeout=60)
            if r.returncode:
                raise RuntimeError(f"message: exit {r.returncode} {r.stderr.strip()}")
        else:
            raise RuntimeError("unknown op")
        print(op, "ok")
    except (nbd.Error, RuntimeError, subprocess.TimeoutExpired) as e:
        print(op, str(e).replace("\n", " "))
        bad += 1
    sys.stdout.flush()
h.shutdown()
sys.exit(1 if bad else 0)
