// Running several I/O coroutines side by side and waiting for all of them:
// what the kernel does by submitting bios and counting their completions.
#pragma once
#include <span>
#include <vector>

#include "dmnbd/asio.hpp"
#include "dmnbd/status.hpp"

namespace dmnbd {

// Starts every task on the caller's executor at once (moving it out of
// `tasks`) and returns when all are done, their results in the order given.
// An exception from one is rethrown once all have finished. A span, not a
// vector by value: GCC 12 destroys the temporaries of a co_await expression
// twice when they have a destructor.
Task<std::vector<Status>> when_all(std::span<Task<Status>> tasks);

// The first error in `results`, in their order; ok when there is none.
Status first_error(const std::vector<Status>& results);

}  // namespace dmnbd
