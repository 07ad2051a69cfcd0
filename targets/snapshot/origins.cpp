#include "origins.hpp"

#include <algorithm>

#include "dmnbd/when_all.hpp"
#include "snapshot.hpp"

namespace dmnbd::snapshot {

Origins& Origins::instance() {
  static Origins origins;
  return origins;
}

void Origins::add(const std::shared_ptr<Snapshot>& snapshot) {
  std::unique_lock lk(mutex_);
  snapshots_.push_back(snapshot);
  keys_.push_back(snapshot.get());
}

void Origins::remove(const Snapshot* snapshot) {
  std::unique_lock lk(mutex_);
  for (size_t i = 0; i < keys_.size(); ++i)
    if (keys_[i] == snapshot) {
      keys_.erase(keys_.begin() + static_cast<ptrdiff_t>(i));
      snapshots_.erase(snapshots_.begin() + static_cast<ptrdiff_t>(i));
      return;
    }
}

// The registered snapshots still alive. Filtered by the callers outside the
// lock: dropping the last reference to one runs its destructor, which
// unregisters it and so takes the lock.
std::vector<std::shared_ptr<Snapshot>> Origins::live() const {
  std::vector<std::shared_ptr<Snapshot>> out;
  std::shared_lock lk(mutex_);
  for (const auto& weak : snapshots_)
    if (auto s = weak.lock()) out.push_back(std::move(s));
  return out;
}

std::vector<std::shared_ptr<Snapshot>> Origins::snapshots_of(const BlockDevice* origin) const {
  std::vector<std::shared_ptr<Snapshot>> out = live();
  std::erase_if(out, [origin](const auto& s) { return s->origin()->identity() != origin; });
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a->chunk_sectors() > b->chunk_sectors();
  });
  return out;
}

std::shared_ptr<Snapshot> Origins::sharing_cow(const BlockDevice* origin,
                                               const BlockDevice* cow) const {
  for (auto& s : live())
    if (s->origin()->identity() == origin && s->cow()->identity() == cow) return s;
  return nullptr;
}

bool Origins::all_copied_out(const BlockDevice* origin, uint64_t sector, uint64_t count) const {
  std::shared_lock lk(mutex_);
  for (const Snapshot* s : keys_)
    if (s->origin()->identity() == origin && !s->copied_out(sector, count)) return false;
  return true;
}

Task<void> copy_out_to_snapshots(const BlockDevice* origin, uint64_t sector, uint64_t count) {
  if (Origins::instance().all_copied_out(origin, sector, count)) co_return;
  std::vector<std::shared_ptr<Snapshot>> snapshots = Origins::instance().snapshots_of(origin);
  std::erase_if(snapshots, [&](const auto& s) { return s->copied_out(sector, count); });
  if (snapshots.empty()) co_return;
  std::vector<Task<Status>> copies;
  for (const auto& s : snapshots)
    copies.push_back([](Snapshot& snap, uint64_t sector, uint64_t count) -> Task<Status> {
      co_await snap.copy_out(sector, count);
      co_return ok();
    }(*s, sector, count));
  co_await when_all(std::span(copies));
}

}  // namespace dmnbd::snapshot
