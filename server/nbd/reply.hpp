// A reply as it goes on the wire: protocol bytes, then payload bytes from a
// buffer or from a mapped view of a backing file, with the payload lease that
// keeps a READ's bytes counted until they are sent.
#pragma once
#include <boost/asio/buffer.hpp>
#include <boost/container/small_vector.hpp>
#include <cstdint>
#include <vector>

#include "buffer_pool.hpp"
#include "byte_budget.hpp"
#include "dm/mapped_view.hpp"
#include "dmnbd/asio.hpp"

namespace dmnbd::nbd {

// A READ's or WRITE's payload bytes, counted against both budgets.
struct PayloadLease {
  ByteBudget::Lease connection, server;
};

struct Reply {
  struct Segment {
    bool from_data;
    size_t offset, length;
  };
  // Inline capacity for the common replies, so answering needs no heap.
  boost::container::small_vector<uint8_t, 64> meta;
  Buffer data;
  MappedView view;  // payload bytes it has pieces for come from there, not from `data`
  PayloadLease lease;
  boost::container::small_vector<Segment, 3> segments;

  // Payload bytes [offset, offset + length) as buffers to send.
  void append_payload(size_t offset, size_t length, std::vector<asio::const_buffer>& out) const;
};

class ReplyBuilder {
 public:
  // Appends protocol bytes written by `encode` into the reply's meta buffer.
  template <typename F>
  ReplyBuilder& meta(F&& encode) {
    size_t before = reply_.meta.size();
    encode(reply_.meta);
    add(false, before, reply_.meta.size() - before);
    return *this;
  }
  ReplyBuilder& data(size_t offset, size_t length) {
    add(true, offset, length);
    return *this;
  }
  Reply take(Buffer data, MappedView* view = nullptr, PayloadLease lease = {}) {
    reply_.data = std::move(data);
    reply_.lease = std::move(lease);
    if (view && *view) std::swap(reply_.view, *view);
    return std::move(reply_);
  }

 private:
  void add(bool from_data, size_t offset, size_t length) {
    auto& segs = reply_.segments;
    if (!segs.empty() && segs.back().from_data == from_data &&
        segs.back().offset + segs.back().length == offset) {
      segs.back().length += length;  // adjacent header bytes go out as one buffer
    } else {
      segs.push_back({from_data, offset, length});
    }
  }
  Reply reply_;
};

}  // namespace dmnbd::nbd
