// I/O without a copy in user space. When every target on a request's path
// only remaps it, and the device at the bottom holds the bytes in memory (a
// file on tmpfs, mapped), direct_access (block_device.hpp, forwarded by such
// targets) adds a piece pointing at them instead of the I/O being done. A
// request split across targets or stripes gets one piece per part; for a
// read, a part that cannot be mapped stays with the usual path.
//
// Reads (Device::read with a view): the NBD layer sends straight from the
// pieces, so the only copy is the kernel's into the socket. Writes
// (Device::map_write, all of the request or nothing): the NBD layer receives
// the payload straight into the pieces, so the only copy is the kernel's out
// of the socket.
//
// The bytes move when the socket copies them, not when the request completes.
// So that this stays invisible, the view holds each device it came through "in
// flight" (a suspend waits for it) until they have moved: a suspend never
// returns while a view could still touch the device. Whoever holds a view must
// use it or drop it promptly, and never wait for the client while holding it.
#pragma once
#include <boost/container/small_vector.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "dm/suspend_gate.hpp"

namespace dmnbd {

struct MappedView {
  struct Piece {
    uint64_t offset;  // within the request, in bytes
    uint64_t length;
    std::byte* data;
    uint64_t end() const { return offset + length; }
  };
  // In request order: the Device routes a request's parts in order.
  boost::container::small_vector<Piece, 2> pieces;
  boost::container::small_vector<std::shared_ptr<const void>, 1> owners;  // keep `data` mapped
  boost::container::small_vector<SuspendGate::Pass, 2> holds;

  explicit operator bool() const { return !pieces.empty(); }
  uint64_t bytes() const {
    uint64_t n = 0;
    for (const Piece& p : pieces) n += p.length;
    return n;
  }

  void add(uint64_t offset, uint64_t length, std::byte* data,
           const std::shared_ptr<const void>& owner) {
    pieces.push_back({offset, length, data});
    if (owners.empty() || owners.back() != owner) owners.push_back(owner);
  }
  // Lets go of the bytes and of the devices they came through.
  void release() {
    holds.clear();
    owners.clear();
    pieces.clear();
  }
};

}  // namespace dmnbd
