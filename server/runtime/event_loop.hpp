// Runs a worker's event loop with adaptive busy polling, the technique QEMU's
// iothreads and kernel busy-poll sockets use. After the last piece of work the
// loop keeps polling for up to `max_poll` before it sleeps: a client waiting on
// one request at a time sends the next one within a few microseconds, and
// catching it while still awake saves the sleep and the cross-CPU wake-up,
// which dominate the round trip (more so in a VM, where waking an idle vCPU
// means an exit to the host).
//
// Polling only uses a CPU nobody else wants: the loop yields while it polls,
// and once the scheduler has had to switch it out (another thread wanted the
// CPU) it stops polling for a while and sleeps as usual.
#pragma once
#include <chrono>

#include "dmnbd/asio.hpp"

namespace dmnbd::runtime {

// Returns when `ctx` is stopped or runs out of work. max_poll 0: ctx.run().
void run_event_loop(asio::io_context& ctx, std::chrono::microseconds max_poll);

}  // namespace dmnbd::runtime
