#include "dm/io_engine.hpp"

#include <cstdlib>
#include <stdexcept>

namespace dmnbd {
namespace {
thread_local IoEngine* t_engine = nullptr;
}

IoEngine& IoEngine::current() {
  if (!t_engine) throw std::logic_error("no IoEngine installed on this thread");
  return *t_engine;
}

IoEngineScope::IoEngineScope(asio::io_context& ctx, bool allow_uring) : previous_(t_engine) {
  // DMNBD_NO_URING=1 forces the portable engine (for tests and odd sandboxes).
  const char* no_uring = std::getenv("DMNBD_NO_URING");
  if (allow_uring && !(no_uring && *no_uring && *no_uring != '0')) engine_ = make_uring_engine(ctx);
  if (!engine_) engine_ = make_thread_engine(ctx);
  t_engine = engine_.get();
}

IoEngineScope::~IoEngineScope() {
  t_engine = previous_;
}

}  // namespace dmnbd
