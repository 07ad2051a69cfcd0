#include "verity_params.hpp"

#include <bit>
#include <climits>
#include <cstring>
#include <vector>

#include "dmnbd/arg_set.hpp"

namespace dmnbd::verity {
namespace {

constexpr uint32_t kPageSize = 4096;
constexpr uint32_t kLogicalBlockSize = 512;  // what every dmnbd device reports

// DM_VERITY_OPTS_MAX with CONFIG_DM_VERITY_FEC and
// CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG, as Debian's 6.1 kernels have them.
constexpr uint32_t kOptsFec = 8;
constexpr uint32_t kOptsSig = 2;
constexpr uint32_t kOptsMax = 4 + kOptsFec + kOptsSig;

// Reed-Solomon(255, N) bounds of fec_roots.
constexpr unsigned kFecRsm = 255, kFecMaxRsn = 253, kFecMinRsn = 231;

constexpr const char* kLogging = "ignore_corruption";
constexpr const char* kRestart = "restart_on_corruption";
constexpr const char* kPanic = "panic_on_corruption";
constexpr const char* kIgnoreZeroes = "ignore_zero_blocks";
constexpr const char* kAtMostOnce = "check_at_most_once";
constexpr const char* kTasklet = "try_verify_in_tasklet";
constexpr const char* kFecDev = "use_fec_from_device";
constexpr const char* kFecBlocks = "fec_blocks";
constexpr const char* kFecStart = "fec_start";
constexpr const char* kFecRoots = "fec_roots";
constexpr const char* kSigKey = "root_hash_sig_key_desc";
constexpr const char* kSigPrefix = "DM Verity Sig Verification ";

bool is_mode(const std::string& w) {
  return same_word(w, kLogging) || same_word(w, kRestart) || same_word(w, kPanic);
}
bool is_fec(const std::string& w) {
  return same_word(w, kFecDev) || same_word(w, kFecBlocks) || same_word(w, kFecStart) ||
         same_word(w, kFecRoots);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// hex2bin(): 2 * out.size() hex digits, either case; false on any other character.
bool hex2bin(const std::string& text, std::vector<uint8_t>& out) {
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

std::string bin2hex(const std::vector<uint8_t>& bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

// (sector_t)(n << shift) >> shift == n: the count fits in sectors.
bool fits_shifted(uint64_t n, unsigned shift) {
  return ((n << shift) >> shift) == n;
}

std::shared_ptr<BlockDevice> open_read_only(const TargetContext& ctx, const std::string& name,
                                            const char* error) {
  try {
    return ctx.resolver.open(name, true);  // FMODE_READ
  } catch (const TargetError& e) {
    throw TargetError(std::string(error) + " (" + e.what() + ")");
  }
}

// The FEC options are parsed as the kernel does, so that a table is refused
// for the same reason; FEC itself (decoding with the parity device) is not
// supported yet.
struct FecArgs {
  std::shared_ptr<BlockDevice> dev;  // use_fec_from_device: FEC is enabled
  uint64_t blocks = 0, start = 0;
  unsigned roots = 0;
};

class OptParser {
 public:
  OptParser(const TargetContext& ctx, VerityParams& p, FecArgs& fec)
      : ctx_(ctx), p_(p), fec_(fec) {}

  // verity_parse_opt_args(). The first pass (only_modifier_opts) runs before
  // the fixed arguments are read and takes only what changes how they are
  // read: try_verify_in_tasklet (it picks the hash implementation).
  void parse(TargetArgs opts, bool only_modifier_opts) {
    ArgSet as(opts);
    uint32_t argc = as.read_group(0, kOptsMax, "Invalid number of feature args");
    while (argc) {
      const std::string& name = *as.shift();
      --argc;
      if (is_mode(name)) {
        if (only_modifier_opts) continue;
        if (p_.mode != VerityMode::eio) throw TargetError("Conflicting error handling parameters");
        p_.mode = same_word(name, kLogging)   ? VerityMode::logging
                  : same_word(name, kRestart) ? VerityMode::restart
                                              : VerityMode::panic;
      } else if (same_word(name, kIgnoreZeroes)) {
        if (only_modifier_opts) continue;
        alloc_zero_digest();
      } else if (same_word(name, kAtMostOnce)) {
        if (only_modifier_opts) continue;
        // the kernel's bitset can only handle INT_MAX blocks
        if (p_.geometry.data_blocks > INT_MAX)
          throw TargetError("device too large to use check_at_most_once");
        p_.check_at_most_once = true;
      } else if (same_word(name, kTasklet)) {
        p_.try_verify_in_tasklet = true;
      } else if (is_fec(name)) {
        if (only_modifier_opts) continue;
        parse_fec(as, argc, name);
      } else if (same_word(name, kSigKey)) {
        if (only_modifier_opts) continue;
        if (!argc) throw TargetError(std::string(kSigPrefix) + "Signature key not specified");
        // request_key() finds no such key: there is no kernel keyring here.
        throw TargetError(std::string(kSigPrefix) +
                          "Invalid key specified (root hash signatures need the kernel "
                          "keyring, which dmnbd does not have)");
      } else if (only_modifier_opts) {
        // Could be the value of an option this pass skips.
        continue;
      } else {
        throw TargetError("Unrecognized verity feature request");
      }
    }
  }

 private:
  void alloc_zero_digest() {
    std::vector<std::byte> zeroes(size_t{1} << p_.geometry.data_block_bits);
    p_.zero_digest.resize(p_.hash->digest_size());
    if (!p_.hash->digest(zeroes, p_.zero_digest.data()))
      throw TargetError("Cannot allocate zero digest");
  }

  // verity_fec_parse_opt_args()
  void parse_fec(ArgSet& as, uint32_t& argc, const std::string& name) {
    if (!argc) throw TargetError("FEC feature arguments require a value");
    const std::string& value = *as.shift();
    --argc;
    const unsigned shift = p_.geometry.data_block_bits - kSectorShift;
    if (same_word(name, kFecDev)) {
      fec_.dev = open_read_only(ctx_, value, "FEC device lookup failed");
    } else if (same_word(name, kFecBlocks)) {
      if (!scan_u64(value, fec_.blocks) || !fits_shifted(fec_.blocks, shift))
        throw TargetError("Invalid fec_blocks");
    } else if (same_word(name, kFecStart)) {
      if (!scan_u64(value, fec_.start) || !fits_shifted(fec_.start, shift))
        throw TargetError("Invalid fec_start");
    } else {
      // sscanf("%hhu%c"): a u8, wrapping as the kernel's does is refused.
      uint32_t roots = 0;
      if (!scan_u32(value, roots) || roots > 255 || !roots || roots < kFecRsm - kFecMaxRsn ||
          roots > kFecRsm - kFecMinRsn)
        throw TargetError("Invalid fec_roots");
      fec_.roots = roots;
    }
  }

  const TargetContext& ctx_;
  VerityParams& p_;
  FecArgs& fec_;
};

// verity_fec_ctr()'s checks for an enabled FEC, then the refusal.
void check_fec(const VerityParams& p, const FecArgs& fec) {
  if (!fec.dev) return;  // fec_* without a device: the kernel ignores them
  const VerityGeometry& g = p.geometry;
  if (g.data_block_bits != g.hash_block_bits)
    throw TargetError("Block sizes must match to use FEC");
  if (!fec.roots) throw TargetError("Missing fec_roots");
  if (!fec.blocks) throw TargetError("Missing fec_blocks");
  const uint64_t rsn = kFecRsm - fec.roots;
  const uint64_t rounds = fec.blocks / rsn + (fec.blocks % rsn != 0);
  const uint64_t hash_blocks = g.hash_blocks - g.hash_start;
  if (fec.blocks < g.data_blocks + hash_blocks || !rounds) throw TargetError("Invalid fec_blocks");
  const uint64_t hash_dev_blocks = p.hash_dev->sectors() >> (g.hash_block_bits - kSectorShift);
  if (hash_dev_blocks < g.hash_start + (fec.blocks - g.data_blocks))
    throw TargetError("Hash device is too small for fec_blocks");
  throw TargetError(
      "FEC is not supported yet (use_fec_from_device: dmnbd does not decode Reed-Solomon parity)");
}

}  // namespace

VerityParams parse_verity_params(const TargetContext& ctx, TargetArgs args) {
  VerityParams p;
  FecArgs fec;
  OptParser opts(ctx, p, fec);
  VerityGeometry& g = p.geometry;

  if (!ctx.read_only) throw TargetError("Device must be readonly");
  if (args.size() < 10) throw TargetError("Not enough arguments");
  if (args.size() > 10) opts.parse(args.subspan(10), true);

  uint32_t num = 0;
  if (!scan_u32(args[0], num) || num > 1) throw TargetError("Invalid version");
  g.version = num;

  p.data_dev_name = args[1];
  p.data_dev = open_read_only(ctx, p.data_dev_name, "Data device lookup failed");
  p.hash_dev_name = args[2];
  p.hash_dev = open_read_only(ctx, p.hash_dev_name, "Hash device lookup failed");

  if (!scan_u32(args[3], num) || !std::has_single_bit(num) || num < kLogicalBlockSize ||
      num > kPageSize)
    throw TargetError("Invalid data device block size");
  g.data_block_bits = std::countr_zero(num);

  if (!scan_u32(args[4], num) || !std::has_single_bit(num) || num < kLogicalBlockSize ||
      num > INT_MAX)
    throw TargetError("Invalid hash device block size");
  g.hash_block_bits = std::countr_zero(num);

  uint64_t num_ll = 0;
  if (!scan_u64(args[5], num_ll) || !fits_shifted(num_ll, g.data_block_bits - kSectorShift))
    throw TargetError("Invalid data blocks");
  g.data_blocks = num_ll;

  if (ctx.length > g.data_blocks << (g.data_block_bits - kSectorShift))
    throw TargetError("Data device is too small");

  if (!scan_u64(args[6], num_ll) || !fits_shifted(num_ll, g.hash_block_bits - kSectorShift))
    throw TargetError("Invalid hash start");
  g.hash_start = num_ll;

  p.alg_name = args[7];
  p.hash = VerityHash::create(p.alg_name);
  if (!p.hash) throw TargetError("Cannot initialize hash function");

  g.digest_size = p.hash->digest_size();
  if ((uint64_t{1} << g.hash_block_bits) < uint64_t{g.digest_size} * 2)
    throw TargetError("Digest size too big");

  p.root_digest.resize(g.digest_size);
  if (args[8].size() != g.digest_size * 2 || !hex2bin(args[8], p.root_digest))
    throw TargetError("Invalid root digest");

  if (args[9] != "-") {
    p.salt.resize(args[9].size() / 2);
    if (args[9].size() != p.salt.size() * 2 || !hex2bin(args[9], p.salt))
      throw TargetError("Invalid salt");
  }
  p.hash->set_salt(g.version, p.salt);

  if (args.size() > 10) opts.parse(args.subspan(10), false);

  // No signature was given (one would have been refused above), and the
  // kernel's require_signatures is off by default: nothing to verify.

  g.compute();

  const uint64_t hash_dev_blocks = p.hash_dev->sectors() >> (g.hash_block_bits - kSectorShift);
  if (hash_dev_blocks < g.hash_blocks) throw TargetError("Hash device is too small");

  check_fec(p, fec);
  return p;
}

std::string verity_table_line(const VerityParams& p) {
  const VerityGeometry& g = p.geometry;
  std::string out = std::to_string(g.version) + " " + p.data_dev_name + " " + p.hash_dev_name +
                    " " + std::to_string(1u << g.data_block_bits) + " " +
                    std::to_string(uint64_t{1} << g.hash_block_bits) + " " +
                    std::to_string(g.data_blocks) + " " + std::to_string(g.hash_start) + " " +
                    p.alg_name + " " + bin2hex(p.root_digest) + " " +
                    (p.salt.empty() ? std::string("-") : bin2hex(p.salt));
  const unsigned args = (p.mode != VerityMode::eio) + !p.zero_digest.empty() +
                        p.check_at_most_once + p.try_verify_in_tasklet;
  if (!args) return out;
  out += " " + std::to_string(args);
  if (p.mode == VerityMode::logging) out += std::string(" ") + kLogging;
  if (p.mode == VerityMode::restart) out += std::string(" ") + kRestart;
  if (p.mode == VerityMode::panic) out += std::string(" ") + kPanic;
  if (!p.zero_digest.empty()) out += std::string(" ") + kIgnoreZeroes;
  if (p.check_at_most_once) out += std::string(" ") + kAtMostOnce;
  if (p.try_verify_in_tasklet) out += std::string(" ") + kTasklet;
  return out;
}

}  // namespace dmnbd::verity
