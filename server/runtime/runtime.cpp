#include "runtime.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <optional>
#include <thread>

#include "dm/io_engine.hpp"
#include "event_loop.hpp"

namespace dmnbd::runtime {

struct Runtime::Worker {
  asio::io_context ctx{1};  // one thread: no locking inside Asio
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard{
      ctx.get_executor()};
  std::thread thread;
  std::atomic<const char*> engine_kind = nullptr;
};

Runtime::Runtime(unsigned workers, std::chrono::microseconds max_poll) : max_poll_(max_poll) {
  if (workers == 0) workers = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < workers; ++i) workers_.push_back(std::make_unique<Worker>());
}

Runtime::~Runtime() {
  join_workers();
}

void Runtime::start() {
  for (auto& w : workers_) {
    Worker* worker = w.get();
    worker->thread = std::thread([this, worker] {
      IoEngineScope engine(worker->ctx);
      worker->engine_kind = engine.engine().kind();
      run_event_loop(worker->ctx, max_poll_);
    });
  }
  for (auto& w : workers_)
    while (!w->engine_kind) std::this_thread::yield();
  spdlog::info("{} event loop(s), backing I/O through {}", workers_.size(), engine_kind());
}

void Runtime::run(Task<void> startup, std::function<void()> on_signal) {
  asio::signal_set signals(main_, SIGINT, SIGTERM);
  signals.async_wait([on_signal = std::move(on_signal)](boost::system::error_code ec, int signo) {
    if (ec) return;
    spdlog::info("received {}", signo == SIGINT ? "SIGINT" : "SIGTERM");
    on_signal();
  });
  auto guard = asio::make_work_guard(main_);
  IoEngineScope engine(main_);  // suspend flushes backing files from here
  std::exception_ptr failed;
  asio::co_spawn(main_, std::move(startup), [this, &failed](std::exception_ptr e) {
    if (!e) return;
    failed = e;
    main_.stop();
  });
  main_.run();
  join_workers();
  if (failed) std::rethrow_exception(failed);
}

void Runtime::stop() {
  main_.stop();
}

asio::io_context& Runtime::worker(size_t i) {
  return workers_.at(i)->ctx;
}

asio::io_context& Runtime::next_worker() {
  return workers_[next_++ % workers_.size()]->ctx;
}

const char* Runtime::engine_kind() const {
  return workers_.empty() ? "none" : workers_[0]->engine_kind.load();
}

void Runtime::join_workers() {
  for (auto& w : workers_) {
    w->guard.reset();
    w->ctx.stop();
    if (w->thread.joinable()) w->thread.join();
  }
}

}  // namespace dmnbd::runtime
