// delay <dev> <offset> <ms> [<wdev> <woffset> <wms> [<fdev> <foffset> <fms>]]:
// holds each bio back for a number of milliseconds, then sends it on. The
// first triple is for reads (and, alone, for everything); the second for
// writes and discards (and, without a third, flushes); the third for flushes.
// Each bio waits on its own timer, so a delayed bio never holds up another;
// the status line counts the bios waiting, per class. Suspending releases
// every waiting bio at once and stops delaying until the device resumes.
#include <charconv>
#include <list>
#include <mutex>
#include <string_view>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include "dmnbd/target.hpp"

namespace dmnbd {
namespace {

class DelayTarget final : public Target {
 public:
  DelayTarget(const TargetContext& ctx, TargetArgs args) : argc_(args.size()) {
    if (argc_ != 3 && argc_ != 6 && argc_ != 9)
      throw TargetError("Requires exactly 3, 6 or 9 arguments");
    length_ = ctx.length;
    read_ = make_class(ctx, args.subspan(0, 3));
    write_ = argc_ == 3 ? read_ : make_class(ctx, args.subspan(3, 3));
    flush_ = argc_ == 9 ? make_class(ctx, args.subspan(6, 3)) : write_;
  }

  Task<Status> map(Bio bio) override {
    Class& c = bio.op == BioOp::read ? read_ : bio.op == BioOp::flush ? flush_ : write_;
    Counter& ops = bio.op == BioOp::read ? reads_ : bio.op == BioOp::flush ? flushes_ : writes_;
    if (bio.op != BioOp::flush) bio.sector += c.start;
    if (c.delay_ms) co_await wait(c.delay_ms, ops);
    co_return co_await c.dev->submit(bio);
  }

  // delay_presuspend(): send every waiting bio on now, and delay no new ones.
  Task<void> presuspend() override {
    std::list<std::shared_ptr<Waiter>> released;
    {
      std::lock_guard lk(mutex_);
      may_delay_ = false;
      released.swap(waiting_);
      for (auto& w : released) {
        w->queued = false;
        --*w->ops;
      }
    }
    for (auto& w : released) asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
    co_return;
  }

  Task<void> resume() override {
    std::lock_guard lk(mutex_);
    may_delay_ = true;
    co_return;
  }

  std::string table() const override {
    std::string out = triple(read_);
    if (argc_ >= 6) out += " " + triple(write_);
    if (argc_ >= 9) out += " " + triple(flush_);
    return out;
  }

  // "<reads> <writes> <flushes>" waiting right now.
  std::string status() const override {
    std::lock_guard lk(mutex_);
    return std::to_string(reads_) + " " + std::to_string(writes_) + " " + std::to_string(flushes_);
  }

  // Flushes go through map(), to the flush class's device after its delay.
  Task<Status> flush() override { return map(flush_bio()); }
  std::vector<DeviceArea> device_areas() const override {
    return {{read_.dev, read_.start, length_},
            {write_.dev, write_.start, length_},
            {flush_.dev, flush_.start, length_}};
  }

 private:
  struct Class {
    std::string name;
    uint64_t start = 0;
    uint32_t delay_ms = 0;
    std::shared_ptr<BlockDevice> dev;
  };
  using Counter = unsigned;
  struct Waiter {
    explicit Waiter(const asio::any_io_executor& ex) : timer(ex) {}
    asio::steady_timer timer;  // touched only on its executor's thread
    bool queued = true;        // under mutex_: still counted in *ops
    Counter* ops = nullptr;
    std::list<std::shared_ptr<Waiter>>::iterator where;
  };

  static Class make_class(const TargetContext& ctx, TargetArgs a) {
    Class c;
    c.name = a[0];
    c.start = parse_sector(a[1], "Invalid device sector");
    if (!scan_u32(a[2], c.delay_ms)) throw TargetError("Invalid delay");  // sscanf("%u%c")
    c.dev = ctx.get_device(c.name);
    return c;
  }

  static std::string triple(const Class& c) {
    return c.name + " " + std::to_string(c.start) + " " + std::to_string(c.delay_ms);
  }

  // Parks the caller for `ms` milliseconds, or until presuspend() lets it go.
  Task<void> wait(uint32_t ms, Counter& ops) {
    asio::any_io_executor executor = co_await asio::this_coro::executor;
    auto waiter = std::make_shared<Waiter>(executor);
    waiter->timer.expires_after(std::chrono::milliseconds(ms));
    {
      std::lock_guard lk(mutex_);
      if (!may_delay_) co_return;
      waiter->ops = &ops;
      ++ops;
      waiting_.push_back(waiter);
      waiter->where = std::prev(waiting_.end());
    }
    // A cancel posted by presuspend() runs on this thread after this wait has
    // started, so it cannot be missed.
    co_await waiter->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    std::lock_guard lk(mutex_);
    if (waiter->queued) {
      waiter->queued = false;
      --ops;
      waiting_.erase(waiter->where);
    }
  }

  const size_t argc_;
  Class read_, write_, flush_;
  uint64_t length_ = 0;
  mutable std::mutex mutex_;  // everything below
  bool may_delay_ = true;
  Counter reads_ = 0, writes_ = 0, flushes_ = 0;
  std::list<std::shared_ptr<Waiter>> waiting_;
};

}  // namespace

DMNBD_REGISTER_TARGET("delay", DelayTarget, 1, 4, 0);

}  // namespace dmnbd
