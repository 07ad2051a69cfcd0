// CPU-heavy work (encryption, hashing) off the event loops. A large request's
// bytes are split into parts that run side by side on the pool's threads,
// one per core, while the loop serving the request goes on with other I/O;
// the request resumes on its own loop when every part is done. Small work
// stays on the loop: handing it over costs more than doing it.
#pragma once
#include <cstddef>
#include <functional>

#include "dmnbd/asio.hpp"

namespace dmnbd {

// Runs work(i) for each i in [0, parts) on the CPU pool and resumes the
// caller on its own executor once all have returned. `work` must not throw;
// it runs on other threads, so it may touch only what the caller holds still
// while it waits.
Task<void> run_on_cpu_pool(size_t parts, std::function<void(size_t)> work);

// How many threads the pool has (the number of cores).
size_t cpu_pool_threads();

}  // namespace dmnbd
