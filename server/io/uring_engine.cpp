// io_uring engine: submissions are batched until the event loop next runs,
// and completions are signalled through an eventfd that Asio watches.
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <boost/asio/posix/stream_descriptor.hpp>

#include "dm/io_engine.hpp"
#include "handler_slot.hpp"

namespace dmnbd {
namespace {

constexpr unsigned kRingEntries = 256;

class UringEngine final : public IoEngine {
 public:
  UringEngine(asio::io_context& ctx, io_uring ring, int event_fd)
      : ctx_(ctx), ring_(ring), events_(ctx, event_fd) {
    wait_for_completions();
  }

  ~UringEngine() override {
    boost::system::error_code ignored;
    events_.close(ignored);
    io_uring_queue_exit(&ring_);
  }

  Task<int64_t> run(FileOp op) override {
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(int64_t)>(
        [this, op](auto handler) { start(op, CompletionSlot::make(std::move(handler))); },
        asio::use_awaitable);
  }

  const char* kind() const override { return "io_uring"; }

 private:
  void start(const FileOp& op, CompletionSlot* slot) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (!sqe) {  // ring full: hand what we have to the kernel, then retry
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    // (Completions of that early submit are reaped by the eventfd handler.)
    switch (op.kind) {
      case FileOp::Kind::read:
        io_uring_prep_read(sqe, op.fd, op.buf, static_cast<unsigned>(op.length), op.offset);
        sqe->rw_flags = op.flags;
        break;
      case FileOp::Kind::write:
        io_uring_prep_write(sqe, op.fd, op.buf, static_cast<unsigned>(op.length), op.offset);
        sqe->rw_flags = op.flags;
        break;
      case FileOp::Kind::fdatasync:
        io_uring_prep_fsync(sqe, op.fd, IORING_FSYNC_DATASYNC);
        break;
      case FileOp::Kind::fallocate:
        io_uring_prep_fallocate(sqe, op.fd, op.flags, op.offset, op.length);
        break;
    }
    io_uring_sqe_set_data(sqe, slot);
    schedule_submit();
  }

  // One io_uring_enter per event-loop turn, however many requests queued.
  void schedule_submit() {
    if (submit_scheduled_) return;
    submit_scheduled_ = true;
    asio::post(ctx_, [this] {
      submit_scheduled_ = false;
      io_uring_submit(&ring_);
      // Page-cache hits complete inside io_uring_enter: answer them now rather
      // than after another trip through epoll.
      reap();
    });
  }

  // Every completion signals the eventfd. (Registering it for async
  // completions only misses those the kernel posts through task_work, such as
  // buffered reads that waited for a page, and I/O would hang.)
  void wait_for_completions() {
    events_.async_wait(
        asio::posix::descriptor_base::wait_read, [this](boost::system::error_code ec) {
          if (ec == asio::error::operation_aborted) return;
          uint64_t count;
          [[maybe_unused]] ssize_t n = ::read(events_.native_handle(), &count, sizeof count);
          reap();
          wait_for_completions();
        });
  }

  void reap() {
    io_uring_cqe* cqe;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      auto* slot = static_cast<CompletionSlot*>(io_uring_cqe_get_data(cqe));
      int64_t result = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      slot->complete(result);
    }
  }

  asio::io_context& ctx_;
  io_uring ring_;
  asio::posix::stream_descriptor events_;
  bool submit_scheduled_ = false;
};

}  // namespace

std::unique_ptr<IoEngine> make_uring_engine(asio::io_context& ctx) {
  io_uring ring;
  if (io_uring_queue_init(kRingEntries, &ring, 0) < 0) return nullptr;
  int event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd < 0 || io_uring_register_eventfd(&ring, event_fd) < 0) {
    if (event_fd >= 0) close(event_fd);
    io_uring_queue_exit(&ring);
    return nullptr;
  }
  return std::make_unique<UringEngine>(ctx, ring, event_fd);
}

}  // namespace dmnbd
