#include "parity_math.hpp"

#include <isa-l/erasure_code.h>
#include <isa-l/raid.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <vector>

namespace dmnbd::raid {

namespace {

size_t page_rounded(size_t bytes) {
  return (bytes + 4095) & ~size_t(4095);
}

struct BufferCache {
  static constexpr size_t kLimit = 16 << 20;
  std::vector<std::pair<size_t, std::byte*>> free;  // page-rounded size, buffer
  size_t bytes = 0;
  ~BufferCache() {
    for (auto& [n, p] : free) std::free(p);
  }
};
thread_local BufferCache buffer_cache;

}  // namespace

AlignedBuffer::AlignedBuffer(size_t bytes) : size_(bytes) {
  const size_t n = page_rounded(bytes);
  auto& cache = buffer_cache.free;
  for (size_t i = cache.size(); i-- > 0;) {
    if (cache[i].first != n) continue;
    data_ = cache[i].second;
    buffer_cache.bytes -= n;
    cache.erase(cache.begin() + std::ptrdiff_t(i));
    return;
  }
  data_ = static_cast<std::byte*>(std::aligned_alloc(4096, n));
  if (!data_) throw std::bad_alloc();
}

AlignedBuffer::~AlignedBuffer() {
  if (!data_) return;
  const size_t n = page_rounded(size_);
  if (buffer_cache.bytes + n > BufferCache::kLimit) {
    std::free(data_);
    return;
  }
  buffer_cache.free.emplace_back(n, data_);
  buffer_cache.bytes += n;
}

namespace parity {
namespace {

using u8 = unsigned char;

// ISA-L works on pieces this large: the zero block and the scratch space
// are per thread and bounded.
constexpr size_t kPiece = 64 << 10;

struct Scratch {
  AlignedBuffer zero{kPiece}, a{kPiece}, b{kPiece};
  Scratch() { std::memset(zero.data(), 0, kPiece); }
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

u8* at(std::byte* p, size_t off) {
  return reinterpret_cast<u8*>(p) + off;
}
u8* at(const std::byte* p, size_t off) {
  return const_cast<u8*>(reinterpret_cast<const u8*>(p)) + off;
}

// 2^x in md's field (raid6_gfexp).
u8 gexp(unsigned x) {
  u8 v = 1;
  for (unsigned i = 0; i < x; ++i) v = gf_mul(v, 2);
  return v;
}

// dest ^= c * src, through ISA-L's multiply-accumulate.
void mad(u8 c, const u8* src, u8* dest, size_t len) {
  u8 table[32];
  ec_init_tables(1, 1, &c, table);
  gf_vect_mad(int(len), 1, 0, table, const_cast<u8*>(src), dest);
}
// dest = c * src.
void mul(u8 c, const u8* src, u8* dest, size_t len) {
  u8 table[32];
  ec_init_tables(1, 1, &c, table);
  u8* in[1] = {const_cast<u8*>(src)};
  u8* out[1] = {dest};
  ec_encode_data(int(len), 1, 1, table, in, out);
}

// dest = XOR of `sources` (one source: a copy; ISA-L wants two or more).
void xor_into(std::vector<void*>& sources, u8* dest, size_t len) {
  if (sources.size() == 1) {
    std::memcpy(dest, sources[0], len);
    return;
  }
  sources.push_back(dest);
  if (xor_gen(int(sources.size()), int(len), sources.data()))
    throw std::logic_error("xor_gen refused its arguments");
  sources.pop_back();
}

// The syndrome sources of [off, off + n) with devices in `zeroed` as zero
// blocks, then P and Q destinations, as pq_gen takes them.
void pq_into(const RowLayout& row, Blocks blocks, size_t off, size_t n, unsigned za, unsigned zb,
             u8* p, u8* q) {
  std::vector<void*> v;
  for (unsigned dev : row.syndrome_sources)
    v.push_back(dev == kNoDevice || dev == za || dev == zb ? at(scratch().zero.data(), 0)
                                                           : at(blocks[dev], off));
  v.push_back(p);
  v.push_back(q);
  if (pq_gen(int(v.size()), int(n), v.data()))
    throw std::logic_error("pq_gen refused its arguments");
}

unsigned slot_of(const RowLayout& row, unsigned dev) {
  for (unsigned j = 0; j < row.syndrome_sources.size(); ++j)
    if (row.syndrome_sources[j] == dev) return j;
  throw std::logic_error("not a data device of the row");
}

// Device `lost` (data or P) as the XOR of every other block but Q.
void rebuild_by_xor(const RowLayout& row, Blocks blocks, size_t off, size_t n, unsigned lost) {
  std::vector<void*> v;
  for (unsigned dev = 0; dev < blocks.size(); ++dev)
    if (dev != lost && dev != row.q) v.push_back(at(blocks[dev], off));
  xor_into(v, at(blocks[lost], off), n);
}

void compute_piece(const RowLayout& row, Blocks blocks, size_t off, size_t n, u8* p, u8* q) {
  if (row.q == kNoDevice) {
    std::vector<void*> v;
    for (unsigned dev : row.data) v.push_back(at(blocks[dev], off));
    xor_into(v, p, n);
    return;
  }
  pq_into(row, blocks, off, n, kNoDevice, kNoDevice, p, q);
}

void reconstruct_piece(const RowLayout& row, Blocks blocks, size_t off, size_t n, unsigned a,
                       unsigned b) {
  if (b == kNoDevice) {
    if (a == row.q)
      compute_piece(row, blocks, off, n, at(blocks[row.p], off), at(blocks[row.q], off));
    else
      rebuild_by_xor(row, blocks, off, n, a);
    return;
  }
  if (row.is_parity(a) && row.is_parity(b)) {
    compute_piece(row, blocks, off, n, at(blocks[row.p], off), at(blocks[row.q], off));
    return;
  }
  if (row.is_parity(a)) std::swap(a, b);  // a is data from here on
  if (b == row.q) {
    // A data block and Q: the data by XOR through P, then Q again.
    rebuild_by_xor(row, blocks, off, n, a);
    compute_piece(row, blocks, off, n, at(scratch().a.data(), 0), at(blocks[row.q], off));
    return;
  }
  u8* const px = at(scratch().a.data(), 0);
  u8* const qx = at(scratch().b.data(), 0);
  if (b == row.p) {
    // raid6_datap_recov(): D_a = 2^-slot(a) * (Q + Q'), Q' with D_a zero;
    // then P from the data.
    pq_into(row, blocks, off, n, a, kNoDevice, px, qx);
    mad(1, at(blocks[row.q], off), qx, n);  // qx = Q + Q'
    mul(gf_inv(gexp(slot_of(row, a))), qx, at(blocks[a], off), n);
    rebuild_by_xor(row, blocks, off, n, row.p);
    return;
  }
  // raid6_2data_recov(), slots x < y: with P', Q' computed with both zero,
  // D_y = A (P + P') + B (Q + Q'), A = (2^(y-x) + 1)^-1, B = (2^x + 2^y)^-1;
  // D_x = D_y + P + P'.
  unsigned x = slot_of(row, a), y = slot_of(row, b);
  unsigned dx = a, dy = b;
  if (x > y) {
    std::swap(x, y);
    std::swap(dx, dy);
  }
  pq_into(row, blocks, off, n, a, b, px, qx);
  mad(1, at(blocks[row.p], off), px, n);  // px = P + P'
  mad(1, at(blocks[row.q], off), qx, n);  // qx = Q + Q'
  const u8 coefficients[2] = {gf_inv(u8(gexp(y - x) ^ 1)), gf_inv(u8(gexp(x) ^ gexp(y)))};
  u8 tables[2 * 32];
  ec_init_tables(2, 1, const_cast<u8*>(coefficients), tables);
  u8* in[2] = {px, qx};
  u8* out[1] = {at(blocks[dy], off)};
  ec_encode_data(int(n), 2, 1, tables, in, out);
  std::vector<void*> vx{at(blocks[dy], off), px};
  xor_into(vx, at(blocks[dx], off), n);
}

template <typename F>
void in_pieces(size_t len, F&& f) {
  for (size_t off = 0; off < len; off += kPiece) f(off, std::min(kPiece, len - off));
}

}  // namespace

void compute_into(const RowLayout& row, Blocks blocks, size_t len, std::byte* p, std::byte* q) {
  in_pieces(len, [&](size_t off, size_t n) {
    compute_piece(row, blocks, off, n, at(p, off), q ? at(q, off) : nullptr);
  });
}

void compute(const RowLayout& row, Blocks blocks, size_t len) {
  compute_into(row, blocks, len, blocks[row.p], row.q == kNoDevice ? nullptr : blocks[row.q]);
}

void reconstruct(const RowLayout& row, Blocks blocks, size_t len, unsigned a, unsigned b) {
  in_pieces(len, [&](size_t off, size_t n) { reconstruct_piece(row, blocks, off, n, a, b); });
}

void fold_change(const RowLayout& row, unsigned dev, const std::byte* before,
                 const std::byte* after, Blocks blocks, size_t len) {
  in_pieces(len, [&](size_t off, size_t n) {
    u8* const delta = at(scratch().a.data(), 0);
    std::vector<void*> v{at(before, off), at(after, off)};
    xor_into(v, delta, n);
    mad(1, delta, at(blocks[row.p], off), n);
    if (row.q != kNoDevice) mad(gexp(slot_of(row, dev)), delta, at(blocks[row.q], off), n);
  });
}

}  // namespace parity
}  // namespace dmnbd::raid
