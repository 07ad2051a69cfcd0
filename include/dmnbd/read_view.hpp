// A read answered without a copy. When every target on a read's path only
// remaps it, and the device at the bottom holds the bytes in memory (a file on
// tmpfs, mapped), the device points `data` at them instead of filling the
// bio's buffer; the NBD layer then sends straight from there, so the only copy
// is the one the kernel makes into the socket.
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
#include <memory>

#include "dmnbd/suspend_gate.hpp"

namespace dmnbd {

struct ReadView {
  const std::byte* data = nullptr;    // set by the device that answered
  std::shared_ptr<const void> owner;  // keeps `data` mapped
  boost::container::small_vector<SuspendGate::Pass, 2> holds;

  explicit operator bool() const { return data != nullptr; }
  // Lets go of the bytes and of the devices they came through.
  void release() {
    holds.clear();
    owner.reset();
    data = nullptr;
  }
};

}  // namespace dmnbd
