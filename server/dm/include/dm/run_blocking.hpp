// Runs a coroutine to completion on a private event loop (with its own I/O
// engine) and returns its result: for start-up code and tests, never for the
// serving path.
#pragma once
#include <exception>
#include <optional>

#include "dm/io_engine.hpp"
#include "dmnbd/asio.hpp"

namespace dmnbd {

template <typename T>
T run_blocking(Task<T> task, bool allow_uring = true) {
  asio::io_context ctx;
  IoEngineScope engine(ctx, allow_uring);
  std::optional<T> result;
  std::exception_ptr error;
  asio::co_spawn(ctx, std::move(task), [&](std::exception_ptr e, T value) {
    error = e;
    if (!e) result.emplace(std::move(value));
    ctx.stop();
  });
  ctx.run();
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

inline void run_blocking(Task<void> task, bool allow_uring = true) {
  run_blocking(
      [](Task<void> t) -> Task<bool> {
        co_await std::move(t);
        co_return true;
      }(std::move(task)),
      allow_uring);
}

}  // namespace dmnbd
