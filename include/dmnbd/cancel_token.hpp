// Asks long-running work (a kcopyd copy, a background job's step) to stop
// early. The work looks at it between pieces; the piece in flight finishes.
#pragma once
#include <atomic>

namespace dmnbd {

class CancelToken {
 public:
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  // For work that starts over with the same token.
  void reset() { cancelled_.store(false); }

 private:
  std::atomic<bool> cancelled_ = false;
};

}  // namespace dmnbd
