#include "dmnbd/secret_bytes.hpp"

#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <new>

namespace dmnbd {

void wipe_memory(void* data, size_t size) {
  if (size) explicit_bzero(data, size);
}

SecretBytes::SecretBytes(size_t size) : size_(size) {
  if (!size) return;
  // A mapping of its own: mlock and MADV_DONTDUMP work on whole pages, and no
  // other data shares them.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  mapped_ = (size + page - 1) / page * page;
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  data_ = static_cast<uint8_t*>(p);
  madvise(p, mapped_, MADV_DONTDUMP);
  if (mlock(p, mapped_) != 0) {
    static std::atomic<bool> warned = false;
    if (!warned.exchange(true))
      spdlog::warn(
          "cannot lock key memory in RAM ({}): keys may be swapped out; raise "
          "RLIMIT_MEMLOCK (ulimit -l) to prevent it",
          std::strerror(errno));
  }
}

SecretBytes::~SecretBytes() {
  release();
}

SecretBytes::SecretBytes(SecretBytes&& other) noexcept
    : data_(other.data_), size_(other.size_), mapped_(other.mapped_) {
  other.data_ = nullptr;
  other.size_ = other.mapped_ = 0;
}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    release();
    data_ = other.data_;
    size_ = other.size_;
    mapped_ = other.mapped_;
    other.data_ = nullptr;
    other.size_ = other.mapped_ = 0;
  }
  return *this;
}

void SecretBytes::wipe() {
  wipe_memory(data_, size_);
}

void SecretBytes::release() {
  if (!data_) return;
  wipe_memory(data_, mapped_);
  munlock(data_, mapped_);
  munmap(data_, mapped_);
  data_ = nullptr;
  size_ = mapped_ = 0;
}

}  // namespace dmnbd
