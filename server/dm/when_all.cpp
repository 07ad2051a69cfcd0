#include "dmnbd/when_all.hpp"

#include <exception>
#include <functional>
#include <memory>
#include <mutex>

#include <boost/asio/this_coro.hpp>

#include "dmnbd/park.hpp"

namespace dmnbd {

Task<std::vector<Status>> when_all(std::span<Task<Status>> tasks) {
  if (tasks.empty()) co_return std::vector<Status>{};
  // Shared with the completion handlers, which may outlive a waiter that threw.
  struct State {
    std::mutex mutex;
    size_t left = 0;
    std::vector<Status> results;
    std::exception_ptr error;
    std::function<void()> wake;  // the waiter, once it parked
  };
  auto state = std::make_shared<State>();
  state->left = tasks.size();
  state->results.resize(tasks.size());
  auto executor = co_await asio::this_coro::executor;
  for (size_t i = 0; i < tasks.size(); ++i)
    asio::co_spawn(executor, std::move(tasks[i]), [state, i](std::exception_ptr e, Status st) {
      std::function<void()> wake;
      {
        std::lock_guard lk(state->mutex);
        state->results[i] = st;
        if (e && !state->error) state->error = e;
        if (--state->left == 0) wake = std::move(state->wake);
      }
      if (wake) wake();
    });
  co_await park_until_woken([&state](std::function<void()> wake) {
    std::unique_lock lk(state->mutex);
    if (state->left != 0) {
      state->wake = std::move(wake);
      return;
    }
    lk.unlock();
    wake();
  });
  if (state->error) std::rethrow_exception(state->error);
  co_return std::move(state->results);
}

Status first_error(const std::vector<Status>& results) {
  for (const Status& st : results)
    if (st) return st;
  return ok();
}

}  // namespace dmnbd
