// A read answered without a copy. When every target on a read's path only
// remaps it, and the device at the bottom holds the bytes in memory (a file on
// tmpfs, mapped), the device adds a piece pointing at them instead of filling
// the bio's buffer; the NBD layer then sends straight from there, so the only
// copy is the one the kernel makes into the socket. A request split across
// targets or stripes gets one piece per part that could be answered this way;
// the other parts are in the buffer as usual.
//
// The bytes are read when they are copied into the socket, not when the bio
// completes. So that this stays invisible, the view holds each device it came
// through "in flight" (a suspend waits for it) until the bytes are copied: a
// suspend never returns while a zero-copy read could still see later changes.
// Whoever holds a view must copy it or drop it promptly (the session copies a
// view it cannot send at once).
#pragma once
#include <boost/container/small_vector.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "dmnbd/suspend_gate.hpp"

namespace dmnbd {

struct ReadView {
  struct Piece {
    uint64_t offset;  // within the request, in bytes
    uint64_t length;
    const std::byte* data;
    uint64_t end() const { return offset + length; }
  };
  // In request order: the Device routes a request's parts in order.
  boost::container::small_vector<Piece, 2> pieces;
  boost::container::small_vector<std::shared_ptr<const void>, 1> owners;  // keep `data` mapped
  boost::container::small_vector<SuspendGate::Pass, 2> holds;

  explicit operator bool() const { return !pieces.empty(); }

  void add(uint64_t offset, uint64_t length, const std::byte* data,
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
