// Asynchronous file system calls for backing files. Each event-loop thread
// owns one engine: io_uring where the kernel allows it, otherwise a small
// thread pool (containers often forbid io_uring through seccomp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "dmnbd/asio.hpp"

namespace dmnbd {

struct FileOp {
  enum class Kind : uint8_t { read, write, fdatasync, fallocate };
  Kind kind = Kind::read;
  int fd = -1;
  void* buf = nullptr;
  uint64_t offset = 0;
  uint64_t length = 0;
  int flags = 0;  // RWF_* for read/write, FALLOC_FL_* for fallocate
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  // Bytes transferred (read/write) or 0, or -errno. Never blocks the caller's thread.
  virtual Task<int64_t> run(FileOp op) = 0;
  virtual const char* kind() const = 0;

  // The engine of the calling event-loop thread (see IoEngineScope).
  static IoEngine& current();
};

// Installs an engine for the calling thread, bound to `ctx`, for its lifetime.
class IoEngineScope {
 public:
  explicit IoEngineScope(asio::io_context& ctx, bool allow_uring = true);
  ~IoEngineScope();
  IoEngineScope(const IoEngineScope&) = delete;
  IoEngineScope& operator=(const IoEngineScope&) = delete;
  IoEngine& engine() { return *engine_; }

 private:
  std::unique_ptr<IoEngine> engine_;
  IoEngine* previous_;
};

std::unique_ptr<IoEngine> make_uring_engine(asio::io_context& ctx);  // nullptr if unavailable
std::unique_ptr<IoEngine> make_thread_engine(asio::io_context& ctx);

}  // namespace dmnbd
