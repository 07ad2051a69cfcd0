// A request's data buffer. Unlike std::vector it is not zero-filled: every
// byte is overwritten by the socket read or the device read that fills it.
#pragma once
#include <cstddef>
#include <memory>
#include <span>

namespace dmnbd::nbd {

class IoBuffer {
 public:
  IoBuffer() = default;
  explicit IoBuffer(size_t size)
      : data_(std::make_unique_for_overwrite<std::byte[]>(size)), size_(size), capacity_(size) {}

  std::byte* data() const { return data_.get(); }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  void resize(size_t size) { size_ = size; }  // within capacity(): the pool guarantees it
  std::span<std::byte> span() const { return {data_.get(), size_}; }

 private:
  std::unique_ptr<std::byte[]> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace dmnbd::nbd
