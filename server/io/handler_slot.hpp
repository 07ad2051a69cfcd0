// Type-erased, single-use storage for an Asio completion handler, so an
// operation can park the awaiting coroutine and resume it from elsewhere.
#pragma once
#include <cstdint>
#include <utility>

namespace dmnbd {

class CompletionSlot {
 public:
  virtual ~CompletionSlot() = default;
  virtual void complete(int64_t result) = 0;  // runs the handler, then frees the slot

  template <typename Handler>
  static CompletionSlot* make(Handler&& handler);
};

template <typename Handler>
class HandlerSlot final : public CompletionSlot {
 public:
  explicit HandlerSlot(Handler&& h) : handler_(std::move(h)) {}
  void complete(int64_t result) override {
    Handler h = std::move(handler_);
    delete this;
    std::move(h)(result);
  }

 private:
  Handler handler_;
};

template <typename Handler>
CompletionSlot* CompletionSlot::make(Handler&& handler) {
  return new HandlerSlot<std::decay_t<Handler>>(std::forward<Handler>(handler));
}

}  // namespace dmnbd
