#!/bin/bash
# nbdsh_probe.sh - start dmnbd with the layout nbdsh_probe.py expects and run it.
source "$(dirname "$0")/lib.sh"
make_work
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
files:
  - { path: disk0.img, size: 64MiB }
  - { path: ro.img, size: 4MiB }
devices:
  - name: disk
    description: linear disk with a zero tail
    table: |
      0 131072 linear disk0.img 0
      131072 131072 zero
  - name: ro
    description: read-only device
    read_only: true
    table: |
      0 8192 linear ro.img 0
  - name: bad
    description: every I/O fails
    table: |
      0 2048 error
YAML
dmnbd_start "$WORK/cfg.yaml"
run_probe 300 "$PY" "$LIB_DIR/nbdsh_probe.py" "$WORK/nbd.sock"
pass
