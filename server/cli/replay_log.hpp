// `dmnbd replay-log`: reads a dm-log-writes log (the kernel's or dmnbd's
// log-writes target) and replays it onto a file or block device, with the
// options and output of xfstests' src/log-writes/replay-log, plus --list.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>

namespace dmnbd::cli {

struct ReplayLogOptions {
  std::string log;                        // --log FILE (required)
  std::string replay;                     // --replay FILE|DEVICE: write the entries there
  std::string limit = "0";                // --limit N: at most N entries (0: no limit)
  bool next_flush = false;                // --next-flush: stop after the next flush entry
  bool next_fua = false;                  // --next-fua: stop after the next FUA entry
  std::string start_entry = "0";          // --start-entry N
  std::optional<std::string> start_mark;  // --start-mark M: start after mark M
  std::optional<std::string> end_mark;    // --end-mark M: stop after mark M
  bool find = false;                      // --find: print "entry@logsector" of the stop entry
  bool num_entries = false;               // --num-entries: print the entry count
  bool no_discard = false;                // --no-discard: skip discard entries
  std::string fsck;                       // --fsck CMD, with --check
  std::string check;                      // --check N|flush|fua: run CMD every N entries / at each
  std::string start_sector = "0";         // --start-sector S: only replay entries touching [S, E]
  std::string end_sector;                 // --end-sector E
  bool list = false;                      // --list (dmnbd's): print every entry from the start one
  int verbose = 0;                        // -v: replayed entries; -vv: skipped ones too
};

// Runs replay-log; returns the exit status (0 done, 1 error or usage).
int replay_log(const ReplayLogOptions& options, std::ostream& out, std::ostream& err);

// Adds the `replay-log` subcommand to `app`. After parsing, the returned
// function runs it and returns its exit status, or -1 if it was not chosen.
std::function<int()> add_replay_log_command(CLI::App& app);

}  // namespace dmnbd::cli
