// `dmnbd replay-log`, modelled on xfstests' replay-log: the same options, the
// same output and exit statuses, so crash-consistency scripts written for it
// run unchanged with `dmnbd replay-log` in its place. Differences: discards
// are replayed as holes punched in a regular file (BLKDISCARD on a block
// device), falling back to writing zeroes of any length; and --list prints
// every entry.
#include "replay_log.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <vector>

#include "../../targets/log_writes/format.hpp"

namespace dmnbd::cli {
namespace {

namespace lw = logwrites;

// The bytes replay-log reads of an entry when it only seeks past it: the
// header and the byte after it (which must be zero unless it is a mark).
constexpr size_t kSeekHeaderBytes = lw::kEntryBytes + 1;
constexpr uint64_t kDiscardChunk = 1ull << 30;
constexpr size_t kCopyChunk = 8u << 20;

std::string format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

// strtoull(text, &end, 0) with nothing left over.
bool parse_number(const std::string& text, uint64_t& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtoull(text.c_str(), &end, 0);
  return end && *end == '\0';
}

bool pread_all(int fd, void* buf, size_t len, uint64_t offset) {
  auto* p = static_cast<char*>(buf);
  while (len) {
    ssize_t n = ::pread(fd, p, len, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n, len -= n, offset += n;
  }
  return true;
}

bool pwrite_all(int fd, const void* buf, size_t len, uint64_t offset) {
  auto* p = static_cast<const char*>(buf);
  while (len) {
    ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n, len -= n, offset += n;
  }
  return true;
}

class Log {
 public:
  Log(std::ostream& out, std::ostream& err, int verbose)
      : out_(out), err_(err), verbose_(verbose) {}
  ~Log() {
    if (replay_fd_ >= 0) ::close(replay_fd_);
    if (log_fd_ >= 0) ::close(log_fd_);
  }

  // log_open(): the super must have the magic and version 1.
  bool open(const std::string& log_path, const std::string& replay_path) {
    log_fd_ = ::open(log_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (log_fd_ < 0) {
      err_ << format("Couldn't open log %s: %d\n", log_path.c_str(), errno);
      return false;
    }
    if (!replay_path.empty()) {
      replay_fd_ = ::open(replay_path.c_str(), O_WRONLY | O_CLOEXEC);
      if (replay_fd_ < 0) {
        err_ << format("Couldn't open replay file %s: %d\n", replay_path.c_str(), errno);
        return false;
      }
      struct stat st {};
      replay_is_blockdev_ = ::fstat(replay_fd_, &st) == 0 && S_ISBLK(st.st_mode);
    }
    std::byte raw[lw::kSuperBytes];
    if (!pread_all(log_fd_, raw, sizeof raw, 0)) {
      err_ << format("Error reading super: %d\n", errno);
      return false;
    }
    const lw::Super super = lw::decode_super(raw);
    if (super.magic != lw::kMagic) {
      err_ << "Magic doesn't match\n";
      return false;
    }
    if (super.version != lw::kVersion) {
      err_ << format("Version mismatch, wanted %d, have %d\n", int(lw::kVersion),
                     int(super.version));
      return false;
    }
    sectorsize_ = super.sectorsize;
    if (sectorsize_ < lw::kEntryBytes + 1) {
      err_ << format("Bad sectorsize %llu\n", (unsigned long long)sectorsize_);
      return false;
    }
    nr_entries_ = super.nr_entries;
    pos_ = sectorsize_;
    return true;
  }

  uint64_t sectorsize() const { return sectorsize_; }
  uint64_t nr_entries() const { return nr_entries_; }
  uint64_t cur_entry() const { return cur_entry_; }
  uint64_t pos_sectors() const { return pos_ / sectorsize_; }
  int replay_fd() const { return replay_fd_; }
  void set_range(uint64_t start, uint64_t end) { start_sector_ = start, end_sector_ = end; }
  void ignore_discards() { ignore_discard_ = true; }

  // log_seek_entry(): to entry `n` (0-based) from the first one.
  int seek_entry(uint64_t n) {
    if (n >= nr_entries_) {
      err_ << "Invalid entry number\n";
      return -1;
    }
    pos_ = sectorsize_;
    cur_entry_ = 0;
    for (uint64_t i = 0; i < n; ++i) {
      std::byte raw[kSeekHeaderBytes];
      if (!pread_all(log_fd_, raw, sizeof raw, pos_)) {
        err_ << format("Error reading entry: %d\n", errno);
        return -1;
      }
      const lw::Entry e = lw::decode_entry(raw);
      if (!lw::entry_valid(e, raw)) {
        err_ << format("Malformed entry @%llu\n", (unsigned long long)pos_sectors());
        return -1;
      }
      if (verbose_ > 1)
        out_ << format("seek entry %d@%llu: %llu, size %llu, flags 0x%llx\n", int(i),
                       (unsigned long long)pos_sectors(), (unsigned long long)e.sector,
                       (unsigned long long)e.nr_sectors, (unsigned long long)e.flags);
      pos_ += sectorsize_;
      if (!(e.flags & lw::kFlagDiscard)) pos_ += e.nr_sectors * sectorsize_;
      ++cur_entry_;
    }
    return 0;
  }

  // log_seek_next_entry(): reads the next entry's block and moves past its
  // data. 0 read one, 1 at the end, -1 error.
  int seek_next(lw::Entry& e, std::vector<std::byte>& block) {
    if (int r = read_entry(e, block)) return r;
    if (verbose_ > 1)
      out_ << format("seek entry %d@%llu: %llu, size %llu, flags 0x%llx(%s)\n", int(cur_entry_ - 1),
                     (unsigned long long)pos_sectors(), (unsigned long long)e.sector,
                     (unsigned long long)e.nr_sectors, (unsigned long long)e.flags,
                     lw::flags_string(e.flags).c_str());
    if (e.nr_sectors && !(e.flags & lw::kFlagDiscard)) pos_ += e.nr_sectors * sectorsize_;
    return 0;
  }

  // log_replay_next_entry(): the next entry, written to the replay device
  // unless it lies outside [start_sector, end_sector]. 0, 1 at the end, -1.
  int replay_next(lw::Entry& e, std::vector<std::byte>& block) {
    if (int r = read_entry(e, block)) return r;
    const uint64_t size = e.nr_sectors * sectorsize_;
    const bool skip = should_skip(e);
    if (verbose_ > 1 || (verbose_ && !skip))
      out_ << format(
          "%s %d@%llu: sector %llu, size %llu, flags 0x%llx(%s)\n", skip ? "skipping" : "replaying",
          int(cur_entry_ - 1), (unsigned long long)pos_sectors(), (unsigned long long)e.sector,
          (unsigned long long)size, (unsigned long long)e.flags, lw::flags_string(e.flags).c_str());
    if (!size) return 0;
    if (e.flags & lw::kFlagDiscard) return discard(e);
    if (skip) {
      pos_ += size;
      return 0;
    }
    std::vector<char> buf(std::min<uint64_t>(size, kCopyChunk));
    const uint64_t target = e.sector * sectorsize_;
    for (uint64_t done = 0; done < size;) {
      const size_t n = std::min<uint64_t>(size - done, buf.size());
      if (!pread_all(log_fd_, buf.data(), n, pos_ + done)) {
        err_ << format("Error reading data: %d\n", errno);
        return -1;
      }
      if (!pwrite_all(replay_fd_, buf.data(), n, target + done)) {
        err_ << format("Error writing data: %d\n", errno);
        return -1;
      }
      done += n;
    }
    pos_ += size;
    return 0;
  }

 private:
  int read_entry(lw::Entry& e, std::vector<std::byte>& block) {
    if (cur_entry_ >= nr_entries_) return 1;
    block.assign(sectorsize_, std::byte{0});
    if (!pread_all(log_fd_, block.data(), block.size(), pos_)) {
      err_ << format("Error reading entry: %d\n", errno);
      return -1;
    }
    e = lw::decode_entry(block);
    if (!lw::entry_valid(e, block)) {
      err_ << format("Malformed entry @%llu\n", (unsigned long long)pos_sectors());
      return -1;
    }
    ++cur_entry_;
    pos_ += sectorsize_;
    return 0;
  }

  // log_should_skip(): entries with sectors that miss [start, end] entirely.
  bool should_skip(const lw::Entry& e) const {
    if (!e.nr_sectors) return false;
    return e.sector + e.nr_sectors <= start_sector_ || e.sector > end_sector_;
  }

  int discard(const lw::Entry& e) {
    if (ignore_discard_) return 0;
    uint64_t start = e.sector * sectorsize_;
    uint64_t size = e.nr_sectors * sectorsize_;
    while (size) {
      const uint64_t len = std::min(size, kDiscardChunk);
      if (!discard_unsupported_ && !discard_range(start, len)) {
        if (verbose_) out_ << "replay device doesn't support discard, switching to writing zeros\n";
        discard_unsupported_ = true;
      }
      if (discard_unsupported_ && !zero_range(start, len)) return -1;
      size -= len;
      start += len;
    }
    return 0;
  }

  bool discard_range(uint64_t start, uint64_t len) {
    if (replay_is_blockdev_) {
      uint64_t range[2] = {start, len};
      return ::ioctl(replay_fd_, BLKDISCARD, &range) == 0;
    }
    return ::fallocate(replay_fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       static_cast<off_t>(start), static_cast<off_t>(len)) == 0;
  }

  bool zero_range(uint64_t start, uint64_t len) {
    std::vector<char> zeroes(std::min<uint64_t>(len, kCopyChunk), 0);
    while (len) {
      const size_t n = std::min<uint64_t>(len, zeroes.size());
      if (!pwrite_all(replay_fd_, zeroes.data(), n, start)) {
        err_ << format("Error zeroing file: %d\n", errno);
        return false;
      }
      len -= n;
      start += n;
    }
    return true;
  }

  std::ostream& out_;
  std::ostream& err_;
  const int verbose_;
  int log_fd_ = -1, replay_fd_ = -1;
  bool replay_is_blockdev_ = false;
  uint64_t sectorsize_ = 0, nr_entries_ = 0, cur_entry_ = 0, pos_ = 0;
  uint64_t start_sector_ = 0, end_sector_ = UINT64_MAX;
  bool ignore_discard_ = false, discard_unsupported_ = false;
};

// should_stop(): the entry has one of `stop_flags`; when those include MARK,
// only a mark with the text `mark` counts.
bool should_stop(const lw::Entry& e, const std::vector<std::byte>& block, uint64_t stop_flags,
                 const std::optional<std::string>& mark) {
  if (!(e.flags & stop_flags)) return false;
  if (!(stop_flags & lw::kFlagMark)) return true;
  return (e.flags & lw::kFlagMark) && mark && lw::mark_text(e, block) == *mark;
}

void usage(std::ostream& err) {
  err << "Usage: dmnbd replay-log --log <logfile> [options]\n"
         "\t--replay <device> - replay onto a specific device\n"
         "\t--limit <number> - number of entries to replay\n"
         "\t--next-flush - replay to/find the next flush\n"
         "\t--next-fua - replay to/find the next fua\n"
         "\t--start-entry <entry> - start at the given entry #\n"
         "\t--start-mark <mark> - mark to start from\n"
         "\t--end-mark <mark> - replay to/find the given mark\n"
         "\t--find - put replay-log in find mode, will search based on the other options\n"
         "\t--num-entries - print the number of entries in the log\n"
         "\t--no-discard - don't process discard entries\n"
         "\t--fsck - the fsck command to run, must specify --check\n"
         "\t--check [<number>|flush|fua] when to check the file system, must specify --fsck\n"
         "\t--start-sector <sector> - replay ops on region from <sector> onto <device>\n"
         "\t--end-sector <sector> - replay ops on region to <sector> onto <device>\n"
         "\t--list - print every entry: index@logsector, sector, sectors, flags, mark\n"
         "\t-v or --verbose - print replayed ops\n"
         "\t-vv - print also skipped ops\n";
}

}  // namespace

int replay_log(const ReplayLogOptions& o, std::ostream& out, std::ostream& err) {
  // xfstests' mark buffers hold up to 4096 bytes less the entry header.
  const size_t max_mark = 4097 - (lw::kEntryBytes + 8);
  std::optional<std::string> start_mark, end_mark;
  if (o.start_mark) start_mark = o.start_mark->substr(0, max_mark);
  if (o.end_mark) end_mark = o.end_mark->substr(0, max_mark);

  uint64_t limit = 0, start_entry = 0, start_sector = 0, end_sector = UINT64_MAX, check_every = 0;
  if (!parse_number(o.start_entry, start_entry) || !parse_number(o.limit, limit)) {
    err << "Invalid entry number\n";
    return 1;
  }
  if (!parse_number(o.start_sector, start_sector) ||
      (!o.end_sector.empty() && !parse_number(o.end_sector, end_sector))) {
    err << "Invalid sector number\n";
    return 1;
  }
  enum { kCheckNone, kCheckNumber, kCheckFua, kCheckFlush } check_mode = kCheckNone;
  if (!o.check.empty()) {
    if (o.check == "flush") {
      check_mode = kCheckFlush;
    } else if (o.check == "fua") {
      check_mode = kCheckFua;
    } else {
      check_mode = kCheckNumber;
      if (!parse_number(o.check, check_every) || !check_every) {
        err << "Invalid entry number\n";
        return 1;
      }
    }
  }
  uint64_t stop_flags = 0;
  if (o.next_flush) stop_flags |= lw::kFlagFlush;
  if (o.next_fua) stop_flags |= lw::kFlagFua;
  if (end_mark) stop_flags |= lw::kFlagMark;

  if (o.log.empty()) {
    usage(err);
    return 1;
  }
  Log log(out, err, o.verbose);
  if (!log.open(o.log, o.replay)) return 1;
  if (o.no_discard) log.ignore_discards();
  log.set_range(start_sector, end_sector);

  lw::Entry entry;
  std::vector<std::byte> block;
  int ret = 0;
  if (start_mark) {
    while ((ret = log.seek_next(entry, block)) == 0)
      if (should_stop(entry, block, lw::kFlagMark, start_mark)) break;
    if (ret == 1) err << "Couldn't find starting mark\n";
    if (ret) return 1;
  } else if (log.seek_entry(start_entry)) {
    return 1;
  }

  if (o.fsck.empty() != (check_mode == kCheckNone)) {
    usage(err);
    return 1;
  }

  if (o.find) {
    uint64_t seen = 0;
    while ((ret = log.seek_next(entry, block)) == 0) {
      ++seen;
      if ((limit && seen == limit) || should_stop(entry, block, stop_flags, end_mark)) {
        out << format("%llu@%llu\n", (unsigned long long)log.cur_entry() - 1,
                      (unsigned long long)log.pos_sectors());
        return 0;
      }
    }
    if (ret < 0) return 1;
    err << "Couldn't find entry\n";
    return 1;
  }

  if (o.num_entries) {
    out << log.nr_entries() << "\n";
    return 0;
  }

  if (o.list) {
    while (true) {
      const uint64_t at = log.pos_sectors();
      if ((ret = log.seek_next(entry, block)) != 0) break;
      out << format("%llu@%llu: sector %llu, sectors %llu, flags 0x%llx(%s)",
                    (unsigned long long)log.cur_entry() - 1, (unsigned long long)at,
                    (unsigned long long)entry.sector, (unsigned long long)entry.nr_sectors,
                    (unsigned long long)entry.flags, lw::flags_string(entry.flags).c_str());
      if (entry.flags & lw::kFlagMark) out << ", mark " << lw::mark_text(entry, block);
      out << "\n";
    }
    return ret < 0 ? 1 : 0;
  }

  if (o.replay.empty()) {
    out << format("Log version=%d, sectorsize=%lu, entries=%llu\n", int(lw::kVersion),
                  (unsigned long)log.sectorsize(), (unsigned long long)log.nr_entries());
    return 0;
  }

  auto run_fsck = [&]() -> int {
    if (::fsync(log.replay_fd())) return -1;
    out.flush();
    int rc = std::system(o.fsck.c_str());
    if (rc >= 0) rc = WEXITSTATUS(rc);
    return rc ? -1 : 0;
  };
  uint64_t replayed = 0;
  while ((ret = log.replay_next(entry, block)) == 0) {
    ++replayed;
    if (!o.fsck.empty()) {
      if ((check_mode == kCheckNumber && replayed % check_every == 0) ||
          (check_mode == kCheckFua && should_stop(entry, block, lw::kFlagFua, std::nullopt)) ||
          (check_mode == kCheckFlush && should_stop(entry, block, lw::kFlagFlush, std::nullopt)))
        ret = run_fsck();
      if (ret) {
        err << format("Fsck errored out on entry %llu\n", (unsigned long long)log.cur_entry() - 1);
        break;
      }
    }
    if ((limit && replayed == limit) || should_stop(entry, block, stop_flags, end_mark)) break;
  }
  ::fsync(log.replay_fd());
  return ret < 0 ? 1 : 0;
}

std::function<int()> add_replay_log_command(CLI::App& app) {
  struct State {
    ReplayLogOptions options;
    std::string start_mark, end_mark;  // std::optional is not an option type in CLI11 2.1
  };
  auto state = std::make_shared<State>();
  auto* cmd = app.add_subcommand(
      "replay-log",
      "Replay a dm-log-writes log onto a file or device (xfstests' replay-log; no server needed)");
  ReplayLogOptions& o = state->options;
  cmd->add_option("--log", o.log, "The log: a log-writes target's log device or file")->required();
  cmd->add_option("--replay", o.replay, "File or device to replay onto");
  cmd->add_option("--limit", o.limit, "Number of entries to replay");
  cmd->add_flag("--next-flush", o.next_flush, "Replay to/find the next flush");
  cmd->add_flag("--next-fua", o.next_fua, "Replay to/find the next FUA write");
  cmd->add_option("--start-entry", o.start_entry, "Start at entry N (0-based)");
  auto* start_mark = cmd->add_option("--start-mark", state->start_mark, "Start after the mark M");
  auto* end_mark = cmd->add_option("--end-mark", state->end_mark, "Replay to/find the mark M");
  cmd->add_flag("--find", o.find,
                "Find mode: print ENTRY@LOGSECTOR of the entry the options stop at");
  cmd->add_flag("--num-entries", o.num_entries, "Print the number of entries in the log");
  cmd->add_flag("--no-discard", o.no_discard, "Do not replay discards");
  cmd->add_option("--fsck", o.fsck, "Command to check the replay device with (needs --check)");
  cmd->add_option("--check", o.check, "When to run --fsck: every N entries, flush or fua");
  cmd->add_option("--start-sector", o.start_sector, "Replay only entries touching sectors from S");
  cmd->add_option("--end-sector", o.end_sector, "... up to sector E");
  cmd->add_flag("--list", o.list, "Print every entry (from --start-entry/--start-mark on)");
  cmd->add_flag("-v,--verbose", o.verbose, "Print replayed entries; -vv also skipped ones");
  return [cmd, state, start_mark, end_mark]() -> int {
    if (!*cmd) return -1;
    if (start_mark->count()) state->options.start_mark = state->start_mark;
    if (end_mark->count()) state->options.end_mark = state->end_mark;
    return replay_log(state->options, std::cout, std::cerr);
  };
}

}  // namespace dmnbd::cli
