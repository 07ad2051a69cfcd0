#include "dmnbd/cpu_pool.hpp"

#include <atomic>
#include <memory>
#include <thread>

#include <boost/asio/thread_pool.hpp>

#include "dmnbd/park.hpp"

namespace dmnbd {
namespace {

asio::thread_pool& pool() {
  static asio::thread_pool threads(cpu_pool_threads());
  return threads;
}

}  // namespace

size_t cpu_pool_threads() {
  static const size_t count = std::max(1u, std::thread::hardware_concurrency());
  return count;
}

Task<void> run_on_cpu_pool(size_t parts, std::function<void(size_t)> work) {
  if (parts == 0) co_return;
  // The frame, and so `work`, lives until the last part wakes it.
  co_await park_until_woken([&work, parts](std::function<void()> wake) {
    auto left = std::make_shared<std::atomic<size_t>>(parts);
    for (size_t i = 0; i < parts; ++i)
      asio::post(pool(), [&work, i, left, wake] {
        work(i);
        if (left->fetch_sub(1) == 1) wake();
      });
  });
}

}  // namespace dmnbd
