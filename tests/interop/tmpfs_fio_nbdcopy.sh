#!/bin/bash
# tmpfs_fio_nbdcopy.sh - fio.sh and nbdcopy.sh again with every backing file on
# a tmpfs (/dev/shm). There, reads of 64 KiB and more are sent straight from
# the file's mapping (zero-copy), so fio's verify and nbdcopy's comparisons
# check that path with real clients.
here=$(cd "$(dirname "$0")" && pwd)
[ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] || { echo "SKIP: /dev/shm is not a tmpfs"; exit 77; }
[ "$(df -k --output=avail /dev/shm | tail -1)" -gt $((512 << 10)) ] || { echo "SKIP: /dev/shm has less than 512 MiB free"; exit 77; }
export WORK_BASE=/dev/shm
status=0
for t in fio nbdcopy; do
  TEST_NAME=tmpfs_$t bash "$here/$t.sh" || status=1
done
exit $status
