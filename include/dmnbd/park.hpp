// Parking a coroutine until someone, on any thread, calls the wake function
// it was given. The coroutine resumes on its own executor. The building block
// of AsyncMutex, SuspendGate and event waits.
#pragma once
#include <functional>
#include <memory>

#include "dmnbd/asio.hpp"

namespace dmnbd {

// Calls `park(wake)` with a std::function that resumes the awaiting coroutine.
// `park` may call wake() at once, keep it, or hand it to another thread.
template <typename Park>
Task<void> park_until_woken(Park park) {
  co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [&park](auto handler) {
        auto home = asio::get_associated_executor(handler);
        // std::function needs a copyable callable; the handler is move-only.
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        park(std::function<void()>(
            [home, shared] { asio::post(home, [shared] { std::move (*shared)(); }); }));
      },
      asio::use_awaitable);
}

}  // namespace dmnbd
