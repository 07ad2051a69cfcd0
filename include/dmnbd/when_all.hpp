// Running several I/O coroutines side by side and waiting for all of them:
// what the kernel does by submitting bios and counting their completions.
#pragma once
#include <vector>

#include "dmnbd/asio.hpp"
#include "dmnbd/status.hpp"

namespace dmnbd {

// Starts every task on the caller's executor at once and returns when all are
// done, their results in the order given. An exception from one is rethrown
// once all have finished.
Task<std::vector<Status>> when_all(std::vector<Task<Status>> tasks);

// The first error in `results`, in their order; ok when there is none.
Status first_error(const std::vector<Status>& results);

}  // namespace dmnbd
