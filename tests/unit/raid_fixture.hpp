// The raid tests' fixture: five data legs d0..d4 (each with a different
// pattern) and their metadata devices m0..m4, recorded, in memory; a tiny
// device for size errors; and helpers to build a device from a table line,
// read its status, send messages and wait for its sync actions.
#pragma once
#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <cstring>
#include <sstream>

#include "../../targets/raid/metadata_format.hpp"
#include "devices/memory_device.hpp"
#include "devices/recording_device.hpp"
#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd::test {

constexpr uint64_t kLeg = 8192;  // sectors per data leg: 8 regions of 1024
constexpr uint64_t kMeta = 64;   // superblock, bitmap header and bits

// Writes `sectors` of `value` at byte `offset` of the device.
inline Task<Status> write_fill(Device& dev, uint64_t offset, uint64_t sectors, uint8_t value,
                               uint32_t flags = 0) {
  std::vector<std::byte> data = filled(sectors, value);
  co_return co_await dev.write(offset, data, flags);
}

inline Task<void> sleep_ms(int ms) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(std::chrono::milliseconds(ms));
  co_await timer.async_wait(asio::use_awaitable);
}

class RaidTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 5; ++i) {
      legs_.push_back(std::make_shared<RecordingDevice>("d" + std::to_string(i), kLeg));
      metas_.push_back(std::make_shared<RecordingDevice>("m" + std::to_string(i), kMeta));
      legs_.back()->memory()->fill_pattern(uint8_t(40 * i));  // every leg differs
      resolver_.add("d" + std::to_string(i), legs_.back());
      resolver_.add("m" + std::to_string(i), metas_.back());
    }
    resolver_.add("tiny", std::make_shared<MemoryDevice>(16, "tiny"));
  }

  Task<std::shared_ptr<Device>> make(const std::string& table) {
    auto dev = std::make_shared<Device>("r", "", false, 0);
    std::shared_ptr<Table> built = Table::build(table, resolver_, false, dev->event_callback());
    co_await built->open();
    co_await dev->load(built);
    Status st = co_await dev->resume();
    EXPECT_FALSE(st);
    co_return dev;
  }
  static std::string status(Device& dev) { return dev.live_table()->status_text(); }
  static std::string table_line(Device& dev) { return dev.live_table()->table_text(); }
  static Task<void> message(Device& dev, std::string word) {
    std::vector<std::string> words;
    words.push_back(std::move(word));
    co_await dev.live_table()->entries()[0].target->message(std::move(words));
  }
  // "<start> <len> raid <type> <#devs> <chars> <progress>/<total> idle ..."
  static bool idle_and_complete(const std::string& st) {
    std::istringstream in(st);
    std::vector<std::string> w(8);
    for (auto& x : w) in >> x;
    const std::string& ratio = w[6];
    const size_t slash = ratio.find('/');
    return w[7] == "idle" && slash != std::string::npos &&
           ratio.substr(0, slash) == ratio.substr(slash + 1);
  }
  // Polls until the status' sync action is idle with full progress (5 s at most).
  static Task<bool> wait_idle(Device& dev) {
    for (int i = 0; i < 1000; ++i) {
      if (idle_and_complete(status(dev))) co_return true;
      co_await sleep_ms(5);
    }
    co_return false;
  }
  bool legs_equal(int a, int b, uint64_t from = 0, uint64_t count = kLeg) {
    return std::memcmp(legs_[a]->memory()->bytes(from, count).data(),
                       legs_[b]->memory()->bytes(from, count).data(), count * 512) == 0;
  }
  raid::format::Superblock superblock(int i) {
    return raid::format::decode_superblock(metas_[i]->memory()->bytes(0, 1));
  }
  raid::format::BitmapHeader bitmap_header(int i) {
    return raid::format::decode_bitmap_header(metas_[i]->memory()->bytes(8, 1));
  }
  bool bit(int meta, uint64_t r) {
    return (uint8_t(metas_[meta]->memory()->bytes(8, 8)[256 + r / 8]) >> (r % 8)) & 1;
  }

  std::vector<std::shared_ptr<RecordingDevice>> legs_, metas_;
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

}  // namespace dmnbd::test
