// Portable engine: the blocking system call runs on a shared thread pool and
// the result is posted back to the awaiting coroutine's own event loop.
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/thread_pool.hpp>

#include "dm/io_engine.hpp"

namespace dmnbd {
namespace {

int64_t perform(const FileOp& op) {
  ssize_t r = 0;
  switch (op.kind) {
    case FileOp::Kind::read: {
      iovec iov{op.buf, op.length};
      r = preadv2(op.fd, &iov, 1, static_cast<off_t>(op.offset), op.flags);
      break;
    }
    case FileOp::Kind::write: {
      iovec iov{op.buf, op.length};
      r = pwritev2(op.fd, &iov, 1, static_cast<off_t>(op.offset), op.flags);
      break;
    }
    case FileOp::Kind::fdatasync:
      r = fdatasync(op.fd);
      break;
    case FileOp::Kind::fallocate:
      r = fallocate(op.fd, op.flags, static_cast<off_t>(op.offset), static_cast<off_t>(op.length));
      break;
  }
  return r < 0 ? -errno : r;
}

asio::thread_pool& blocking_pool() {
  static asio::thread_pool pool(4);
  return pool;
}

class ThreadEngine final : public IoEngine {
 public:
  explicit ThreadEngine(asio::io_context& ctx) : ctx_(ctx) {}

  Task<int64_t> run(FileOp op) override {
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(int64_t)>(
        [this, op](auto handler) {
          auto home = asio::get_associated_executor(handler, ctx_.get_executor());
          // The guard keeps the caller's loop alive while the call is away.
          asio::post(blocking_pool(), [op, home, guard = asio::make_work_guard(home),
                                       handler = std::move(handler)]() mutable {
            int64_t result = perform(op);
            // The guard travels back with the result: releasing it here, after
            // the post, could touch a loop that has already finished and gone.
            asio::post(home, [handler = std::move(handler), guard = std::move(guard),
                              result]() mutable { std::move(handler)(result); });
          });
        },
        asio::use_awaitable);
  }

  const char* kind() const override { return "thread pool"; }

 private:
  asio::io_context& ctx_;
};

}  // namespace

std::unique_ptr<IoEngine> make_thread_engine(asio::io_context& ctx) {
  return std::make_unique<ThreadEngine>(ctx);
}

}  // namespace dmnbd
