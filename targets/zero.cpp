// zero: reads return zeroes, writes and discards succeed and are dropped.
#include <cstring>

#include "dmnbd/target.hpp"

namespace dmnbd {
namespace {

class ZeroTarget final : public Target {
 public:
  ZeroTarget(const TargetContext&, TargetArgs args) {
    if (!args.empty()) throw TargetError("No arguments required");
  }

  Task<Status> map(Bio bio) override {
    if (bio.op == BioOp::read) {
      std::memset(bio.data.data(), 0, bio.data.size());
      if (bio.reads_zero) *bio.reads_zero = true;
    }
    co_return ok();
  }

  Task<Status> block_status(uint64_t, uint64_t count, ExtentList& out) override {
    out.append(count, kExtentHole | kExtentZero);
    co_return ok();
  }

  std::string table() const override { return {}; }
};

}  // namespace

DMNBD_REGISTER_TARGET("zero", ZeroTarget, 1, 2, 0);

}  // namespace dmnbd
