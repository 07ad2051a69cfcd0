// Helpers shared by the unit tests: temp directories, backing files, and a
// way to run a coroutine to completion on a private event loop.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dm/device.hpp"
#include "dm/file_device.hpp"
#include "dm/io_engine.hpp"
#include "dm/run_blocking.hpp"
#include "dmnbd/target.hpp"

namespace dmnbd::test {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "dmnbd-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// A file of `size` bytes where byte i is (i / 512 + seed) & 0xff, so every
// sector is recognisable.
inline void make_patterned_file(const std::filesystem::path& p, size_t size, uint8_t seed = 0) {
  std::vector<char> data(size);
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>((i / 512 + seed) & 0xff);
  std::ofstream(p, std::ios::binary).write(data.data(), static_cast<std::streamsize>(size));
}

inline std::vector<std::byte> read_file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::byte> out(raw.size());
  std::memcpy(out.data(), raw.data(), raw.size());
  return out;
}

inline uint8_t pattern_byte(uint64_t byte_offset, uint8_t seed = 0) {
  return static_cast<uint8_t>((byte_offset / 512 + seed) & 0xff);
}

// Runs `task` to completion; `use_uring` false selects the thread-pool engine.
template <typename T>
T run_sync(Task<T> task, bool use_uring = true) {
  return run_blocking(std::move(task), use_uring);
}

// Resolves device arguments to files in a directory, or to registered devices.
class DirResolver final : public DeviceResolver {
 public:
  explicit DirResolver(std::filesystem::path dir) : dir_(std::move(dir)) {}
  void add(const std::string& name, std::shared_ptr<BlockDevice> dev) { named_[name] = dev; }
  std::shared_ptr<BlockDevice> open(const std::string& name, bool read_only) override {
    if (auto it = named_.find(name); it != named_.end()) return it->second;
    return FileDevice::open(dir_ / name, read_only);
  }

 private:
  std::filesystem::path dir_;
  std::map<std::string, std::shared_ptr<BlockDevice>> named_;
};

// A file whose sector i starts with "<tag>:<i, 6 digits>".
inline void make_labelled_file(const std::filesystem::path& p, char tag, uint64_t sectors) {
  std::vector<char> data(sectors * 512, '.');
  for (uint64_t i = 0; i < sectors; ++i)
    std::snprintf(&data[i * 512], 32, "%c:%06llu", tag, static_cast<unsigned long long>(i));
  std::ofstream(p, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
}

inline std::string label(std::span<const std::byte> buf, uint64_t sector) {
  return std::string(reinterpret_cast<const char*>(buf.data() + sector * 512), 8);
}

inline std::string expect_label(char tag, uint64_t sector) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%c:%06llu", tag, static_cast<unsigned long long>(sector));
  return buf;
}

// A table built and opened (its targets' metadata read), as a load does.
inline std::shared_ptr<Table> open_table(
    const std::string& text, DeviceResolver& resolver, bool read_only = false,
    std::function<void()> raise_event = [] {}) {
  std::shared_ptr<Table> table = Table::build(text, resolver, read_only, std::move(raise_event));
  run_blocking(table->open());
  return table;
}

// The reason a table is refused with, or "(built)" when it builds and opens.
inline std::string build_error(const std::string& table, DeviceResolver& resolver) {
  try {
    open_table(table, resolver);
  } catch (const TableError& e) {
    return e.reason();
  }
  return "(built)";
}

// A resumed device named `name` with `table` live.
inline std::shared_ptr<Device> make_device(const std::string& table, DeviceResolver& resolver,
                                           bool read_only = false,
                                           const std::string& name = "dev") {
  auto device = std::make_shared<Device>(name, "", read_only, 0);
  run_blocking(device->load(open_table(table, resolver, read_only, device->event_callback())));
  if (Status st = run_blocking(device->resume())) throw std::runtime_error(st.message());
  return device;
}

}  // namespace dmnbd::test
