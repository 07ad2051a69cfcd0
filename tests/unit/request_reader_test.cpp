// The transmission-phase parser: requests arrive in arbitrary pieces (one
// byte at a time, or many requests per read) and must come out whole, with
// write payloads intact even while later reads reuse the receive buffer.
#include "nbd/request_reader.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <random>
#include <thread>

namespace dmnbd::nbd {
namespace {

struct Sent {
  Request request;
  std::vector<uint8_t> payload;
};

std::vector<uint8_t> payload_for(uint64_t cookie, size_t size) {
  std::vector<uint8_t> p(size);
  for (size_t i = 0; i < size; ++i) p[i] = static_cast<uint8_t>(cookie * 31 + i * 7 + (i >> 12));
  return p;
}

// Writes `stream` to `fd` in pieces of random size (many of one byte), then closes it.
std::thread write_in_pieces(int fd, std::vector<uint8_t> stream, unsigned seed) {
  return std::thread([fd, stream = std::move(stream), seed] {
    std::mt19937 rng(seed);
    size_t pos = 0;
    while (pos < stream.size()) {
      size_t n = rng() % 4 == 0 ? 1 : 1 + rng() % 70000;
      n = std::min(n, stream.size() - pos);
      ssize_t w =
          ::send(fd, stream.data() + pos, n, MSG_NOSIGNAL);  // a failed reader stops reading
      if (w <= 0) break;
      pos += static_cast<size_t>(w);
    }
    ::close(fd);
  });
}

// How the test takes a large payload the reader leaves pending.
enum class LargePayload {
  buffered,  // read_payload() into a buffer of its own
  in_place,  // receive_in_place() into two pieces of memory, as the session does
  mixed,     // in place for what has arrived, then read_payload() for the rest
};

// Takes a pending payload into in.payload the way `mode` says; false on failure.
Task<bool> take_payload(RequestReader& reader, BufferPool& pool, Incoming& in, LargePayload mode) {
  const size_t length = in.request.length;
  in.payload = pool.take(length);
  size_t done = 0;
  if (mode != LargePayload::buffered) {
    MappedView view;  // two pieces, split off-sector, as a striped target might give
    const size_t split = length / 3 + 1;
    view.add(0, split, in.payload.data(), nullptr);
    view.add(split, length - split, in.payload.data() + split, nullptr);
    while (done < length) {
      const int64_t n = reader.receive_in_place(view, done);
      if (n < 0) co_return false;
      done += static_cast<size_t>(n);
      if (mode == LargePayload::mixed) break;
      if (done < length) co_await reader.wait_for_payload();
    }
  }
  if (done == length) co_return true;
  Buffer rest = pool.take(length - done);
  if (!co_await reader.read_payload(rest)) co_return false;
  std::memcpy(in.payload.data() + done, rest.data(), rest.size());
  co_return true;
}

// Reads until the stream ends; every request and payload is kept until the end.
std::vector<Incoming> read_all(int fd, LargePayload mode) {
  asio::io_context ctx;
  Socket socket(ctx, asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), fd);
  BufferPool pool;
  std::vector<Incoming> got;
  asio::co_spawn(
      ctx,
      [&]() -> Task<void> {
        RequestReader reader(socket, pool);
        for (;;) {
          Incoming in = co_await reader.next();
          if (in.payload_pending && !co_await take_payload(reader, pool, in, mode))
            in = reader.fail(Incoming::Kind::truncated);
          const auto kind = in.kind;
          got.push_back(std::move(in));
          if (kind != Incoming::Kind::request && kind != Incoming::Kind::oversized) break;
        }
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  ctx.run();
  return got;
}

std::vector<Incoming> receive(const std::vector<uint8_t>& stream, unsigned seed,
                              LargePayload mode = LargePayload::buffered) {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  std::thread writer = write_in_pieces(fds[1], stream, seed);
  auto got = read_all(fds[0], mode);
  writer.join();
  return got;
}

TEST(RequestReader, RequestsAndPayloadsSurviveAnySplit) {
  std::vector<Sent> sent;
  std::vector<uint8_t> stream;
  std::mt19937 rng(7);
  const size_t sizes[] = {512, 4096, 4096, 65536, 65537, 1 << 20, 3 << 20, 512};
  for (uint64_t cookie = 1; cookie <= 400; ++cookie) {
    Sent s;
    s.request = {.type = rng() % 2 ? kCmdWrite : kCmdRead,
                 .cookie = cookie,
                 .offset = cookie << 12,
                 .length = static_cast<uint32_t>(sizes[rng() % 8])};
    if (cookie % 40 == 0) s.request.length = sizes[5];  // a run of large writes
    encode_request(stream, s.request);
    if (s.request.type == kCmdWrite) {
      s.payload = payload_for(cookie, s.request.length);
      stream.insert(stream.end(), s.payload.begin(), s.payload.end());
    }
    sent.push_back(std::move(s));
  }
  for (auto [seed, mode] : {std::pair{1u, LargePayload::buffered},
                            {2u, LargePayload::in_place},
                            {3u, LargePayload::mixed},
                            {4u, LargePayload::in_place}}) {
    auto got = receive(stream, seed, mode);
    ASSERT_EQ(got.size(), sent.size() + 1) << "seed " << seed;
    EXPECT_EQ(got.back().kind, Incoming::Kind::closed);
    for (size_t i = 0; i < sent.size(); ++i) {
      const Incoming& in = got[i];
      ASSERT_EQ(in.kind, Incoming::Kind::request) << "request " << i;
      EXPECT_EQ(in.request.cookie, sent[i].request.cookie);
      EXPECT_EQ(in.request.type, sent[i].request.type);
      EXPECT_EQ(in.request.offset, sent[i].request.offset);
      EXPECT_EQ(in.request.length, sent[i].request.length);
      ASSERT_EQ(in.payload.size(), sent[i].payload.size()) << "request " << i;
      if (in.payload.size() == 0) continue;  // memcmp must not see the null of an empty buffer
      EXPECT_EQ(0, std::memcmp(in.payload.data(), sent[i].payload.data(), in.payload.size()))
          << "payload of request " << i << " (seed " << seed << ")";
    }
  }
}

TEST(RequestReader, OversizedWriteIsConsumedAndReported) {
  std::vector<uint8_t> stream;
  const uint32_t too_big = kMaxPayload + 4096;
  encode_request(stream, {.type = kCmdWrite, .cookie = 1, .length = too_big});
  stream.resize(stream.size() + too_big, 0xee);
  encode_request(stream, {.type = kCmdWrite, .cookie = 2, .length = 512});
  auto p = payload_for(2, 512);
  stream.insert(stream.end(), p.begin(), p.end());
  auto got = receive(stream, 9);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].kind, Incoming::Kind::oversized);
  EXPECT_EQ(got[0].request.cookie, 1u);
  ASSERT_EQ(got[1].kind, Incoming::Kind::request);
  EXPECT_EQ(got[1].request.cookie, 2u);
  ASSERT_EQ(got[1].payload.size(), 512u);
  EXPECT_EQ(0, std::memcmp(got[1].payload.data(), p.data(), 512));
  EXPECT_EQ(got[2].kind, Incoming::Kind::closed);
}

TEST(RequestReader, EndOfStreamInsideARequestIsTruncation) {
  std::vector<uint8_t> header;
  encode_request(header, {.type = kCmdWrite, .cookie = 1, .length = 4096});
  auto mid_header = std::vector<uint8_t>(header.begin(), header.begin() + 10);
  EXPECT_EQ(receive(mid_header, 1).back().kind, Incoming::Kind::truncated);
  auto mid_payload = header;
  mid_payload.resize(header.size() + 100);
  EXPECT_EQ(receive(mid_payload, 1).back().kind, Incoming::Kind::truncated);
  std::vector<uint8_t> large;
  encode_request(large, {.type = kCmdWrite, .cookie = 2, .length = 1 << 20});
  large.resize(large.size() + 300000);
  for (auto mode : {LargePayload::buffered, LargePayload::in_place, LargePayload::mixed})
    EXPECT_EQ(receive(large, 1, mode).back().kind, Incoming::Kind::truncated);
  EXPECT_EQ(receive({}, 1).back().kind, Incoming::Kind::closed);
}

TEST(RequestReader, BadMagicStopsTheStream) {
  std::vector<uint8_t> stream;
  encode_request(stream, {.type = kCmdRead, .cookie = 1, .length = 512});
  stream[0] ^= 0xff;
  auto got = receive(stream, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].kind, Incoming::Kind::bad_magic);
}

TEST(BufferPool, FreeBlocksAreReusedAndSharedOnesAreNot) {
  BufferPool pool;
  std::byte* first;
  {
    Buffer a = pool.take(4096);
    first = a.data();
    Buffer view = a.slice(100, 10);
    a = {};
    EXPECT_TRUE(view.sole_owner());
    EXPECT_NE(pool.take(4096).data(), first) << "a block with a live view was handed out";
  }
  Buffer again = pool.take(8192);
  Buffer other = pool.take(8192);
  EXPECT_TRUE(again.data() == first || other.data() == first) << "a free block was not reused";
  EXPECT_EQ(pool.pooled_bytes(), 2 * BufferPool::kMinBlock);
}

TEST(BufferPool, PooledBytesStayWithinTheBudget) {
  BufferPool pool;
  std::vector<Buffer> held;
  for (int i = 0; i < 40; ++i) held.push_back(pool.take(1 << 20));
  EXPECT_LE(pool.pooled_bytes(), BufferPool::kMaxPooledBytes);
  held.clear();
  for (int i = 0; i < 10; ++i) held.push_back(pool.take(8 << 20));  // the workload changes
  EXPECT_LE(pool.pooled_bytes(), BufferPool::kMaxPooledBytes);
  EXPECT_GE(pool.pooled_bytes(), 8u << 20) << "free small blocks should make room for big ones";
}

}  // namespace
}  // namespace dmnbd::nbd
