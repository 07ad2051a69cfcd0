#include "region_hash.hpp"

#include <bit>

#include "dmnbd/park.hpp"

namespace dmnbd::mirror {

RegionHash::RegionHash(DirtyLog& log)
    : log_(log), region_shift_(unsigned(std::countr_zero(log.region_size()))) {}

RegionState RegionHash::state(RegionId r) const {
  {
    std::lock_guard lk(mutex_);
    if (auto it = regions_.find(r); it != regions_.end()) return it->second.state;
  }
  return log_.in_sync(r) ? RegionState::clean : RegionState::nosync;
}

RegionHash::Entry& RegionHash::find_or_add(RegionId r) {
  auto [it, added] = regions_.try_emplace(r);
  Entry& e = it->second;
  if (added) {
    e.state = log_.in_sync(r) ? RegionState::clean : RegionState::nosync;
    if (e.state == RegionState::clean) put_on_clean_list(r, e);
  }
  return e;
}

void RegionHash::put_on_clean_list(RegionId r, Entry& e) {
  e.on_clean_list = true;
  e.clean_since = std::chrono::steady_clock::now();
  clean_list_.emplace_back(r, e.clean_since);
}

void RegionHash::wake_delayed(Entry& e) {
  for (auto& wake : e.delayed) wake();
  e.delayed.clear();
}

Task<RegionHash::WriteStart> RegionHash::begin_write(RegionId r) {
  while (true) {
    {
      std::lock_guard lk(mutex_);
      Entry& e = find_or_add(r);
      if (e.state != RegionState::recovering) {
        ++e.pending;
        if (e.state == RegionState::clean) {
          e.state = RegionState::dirty;
          e.on_clean_list = false;
          if (uint64_t ticket = log_.mark_region(r)) e.log_ticket = ticket;
        }
        co_return WriteStart{e.state, e.state == RegionState::dirty ? e.log_ticket : 0};
      }
    }
    // The region is being recovered: wait for the copy, then look again.
    co_await park_until_woken([this, r](std::function<void()> wake) {
      std::unique_lock lk(mutex_);
      Entry& e = find_or_add(r);
      if (e.state == RegionState::recovering) {
        e.delayed.push_back(std::move(wake));
        return;
      }
      lk.unlock();
      wake();
    });
  }
}

bool RegionHash::end_write(RegionId r) {
  std::function<void()> quiesced;
  bool went_clean = false;
  {
    std::lock_guard lk(mutex_);
    auto it = regions_.find(r);
    if (it == regions_.end()) return false;
    Entry& e = it->second;
    if (--e.pending) return false;
    if (flush_failure_) {
      // A flush failed some time ago: whether this write reached every leg
      // is unknown, so the region must be resynced.
      e.state = RegionState::nosync;
    } else if (e.state == RegionState::recovering) {
      quiesced = std::move(e.quiesced);
      e.quiesced = nullptr;
    } else if (e.state == RegionState::dirty) {
      e.state = RegionState::clean;
      put_on_clean_list(r, e);
      went_clean = true;
    }
  }
  if (quiesced) quiesced();
  return went_clean;
}

void RegionHash::mark_nosync(RegionId r) {
  std::function<void()> quiesced;
  {
    std::lock_guard lk(mutex_);
    log_.set_region_sync(r, false);
    Entry& e = find_or_add(r);
    const bool recovering = e.state == RegionState::recovering;
    e.state = RegionState::nosync;
    e.on_clean_list = false;
    if (recovering) {
      // The recovery waiting for this write gives up (complete_resync_work(0)).
      wake_delayed(e);
      quiesced = std::move(e.quiesced);
      e.quiesced = nullptr;
    }
  }
  if (quiesced) quiesced();
}

void RegionHash::flush_failed() {
  std::lock_guard lk(mutex_);
  flush_failure_ = true;
}

RegionHash::Cleared RegionHash::clear_clean_regions(std::chrono::steady_clock::duration min_idle) {
  const auto due = std::chrono::steady_clock::now() - min_idle;
  std::lock_guard lk(mutex_);
  Cleared out;
  while (!clean_list_.empty()) {
    const auto [r, since] = clean_list_.front();
    if (since > due) {
      out.next = since + min_idle;
      break;
    }
    clean_list_.pop_front();
    auto it = regions_.find(r);
    if (it == regions_.end() || !it->second.on_clean_list || it->second.clean_since != since)
      continue;  // written again since, or recovering: not clean after all
    log_.clear_region(r);
    regions_.erase(it);
    out.any = true;
  }
  return out;
}

std::optional<RegionId> RegionHash::begin_recovery() {
  std::lock_guard lk(mutex_);
  std::optional<RegionId> r = log_.get_resync_work();
  if (!r) return r;
  Entry& e = find_or_add(*r);
  e.state = RegionState::recovering;
  e.on_clean_list = false;
  return r;
}

Task<bool> RegionHash::wait_quiesced(RegionId r) {
  co_await park_until_woken([this, r](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    Entry& e = find_or_add(r);
    if (e.state == RegionState::recovering && e.pending) {
      e.quiesced = std::move(wake);
      return;
    }
    lk.unlock();
    wake();
  });
  std::lock_guard lk(mutex_);
  auto it = regions_.find(r);
  co_return it != regions_.end() && it->second.state == RegionState::recovering;
}

void RegionHash::end_recovery(RegionId r, bool in_sync, bool cleaned) {
  std::lock_guard lk(mutex_);
  if (cleaned) log_.clear_region(r);
  log_.set_region_sync(r, in_sync);
  auto it = regions_.find(r);
  if (it == regions_.end()) return;
  wake_delayed(it->second);
  regions_.erase(it);
}

}  // namespace dmnbd::mirror
