#!/bin/bash
# dust.sh - the dust target through a real client (libnbd) and the control CLI,
# the way xfstests uses it (dust <dev> 0 512, addbadblock, enable): bad blocks
# fail reads until they are written, a write-fail count fails that many writes,
# and every message answers (or fails) with the kernel's words.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
targets_start du "0 131072 dust disk.img 0 512"
one() { nbdio "$@" | cut -d' ' -f1-2; }
# msg WORDS...: the message's output; $RC its exit status, $ERR its stderr
msg() { dm message du 0 "$@" 2>"$WORK/err"; RC=$?; ERR=$(cat "$WORK/err"); }

check "fill sectors 0-63" is "$(one write:0:32768:0x61)" ok
check "table" is "$(dm table du)" "0 131072 dust disk.img 0 512"
check "status: bypass verbose" is "$(dm status du)" "0 131072 dust disk.img bypass verbose"

check "addbadblock 10" is "$(msg addbadblock 10)" ""
check "addbadblock 20 with write fail count 2" is "$(msg addbadblock 20 2)" ""
check "bypass: bad block reads fine" is "$(one read:5120:512)" "ok 6161616161616161"
check "enable" is "$(msg enable)" ""
check "status: fail_read_on_bad_block" is "$(dm status du)" "0 131072 dust disk.img fail_read_on_bad_block verbose"
check "read of block 10 fails" is "$(one read:5120:512)" EIO
check "a request covering block 10 fails" is "$(one read:4096:4096)" EIO
check "neighbours read fine" is "$(nbdio read:4608:512 read:5632:512 | cut -d' ' -f1 | tr '\n' ' ')" "ok ok "
check "queryblock 10" is "$(msg queryblock 10)" "dust_query_block: block 10 found in badblocklist"
check "countbadblocks" is "$(msg countbadblocks)" "countbadblocks: 2 badblock(s) found"

# A write remaps the block: it succeeds and the block reads again.
check "write block 10" is "$(one write:5120:512:0x62)" ok
check "block 10 reads the new data" is "$(one read:5120:512)" "ok 6262626262626262"
check "queryblock 10: gone" is "$(msg queryblock 10)" "dust_query_block: block 10 not found in badblocklist"

# Write fail count 2: two writes fail, the third remaps.
check "block 20: first write fails" is "$(one write:10240:512:0x63)" EIO
check "block 20: second write fails" is "$(one write:10240:512:0x63)" EIO
check "block 20: still unreadable" is "$(one read:10240:512)" EIO
check "block 20: third write lands" is "$(one write:10240:512:0x63)" ok
check "block 20: readable" is "$(one read:10240:512)" "ok 6363636363636363"

check "addbadblock 30, 31" is "$(msg addbadblock 30)$(msg addbadblock 31)" ""
check "listbadblocks" is "$(msg listbadblocks)" "$(printf '30\n31\n')"
msg addbadblock 30 >/dev/null
check "duplicate add fails (exit 1)" is "$RC" 1
check "... with the kernel's reason" grep -qF "dust_add_block: block 30 already in badblocklist" <<<"$ERR"
msg removebadblock 99 >/dev/null
check "remove of a missing block fails" grep -qF "dust_remove_block: block 99 not found in badblocklist" <<<"$ERR"
msg addbadblock 131073 >/dev/null
check "block past the end refused" grep -qF "selected block value out of range" <<<"$ERR"
msg frob >/dev/null
check "unknown message refused" grep -qF "unrecognized message 'frob' received" <<<"$ERR"
msg addbadblock >/dev/null
check "missing argument refused" grep -qF "addbadblock requires an additional argument" <<<"$ERR"
check "quiet toggles" is "$(msg quiet)$(dm status du)" "0 131072 dust disk.img fail_read_on_bad_block quiet"
msg addbadblock 30 >/dev/null
check "quiet: the duplicate still fails" is "$RC" 1
check "disable: block 30 reads" is "$(msg disable)$(one read:15360:512)" "ok 6161616161616161"
check "clearbadblocks" is "$(msg clearbadblocks)" "dust_clear_badblocks: badblocks cleared"
check "clearbadblocks again" is "$(msg clearbadblocks)" "dust_clear_badblocks: no badblocks found"
check "empty list" is "$(msg listbadblocks)" "No blocks in badblocklist"
check "the disk has every write" is "$(fbytes 5120 1)$(fbytes 10240 1)$(fbytes 15360 1)" 626361
pass
