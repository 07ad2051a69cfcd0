#include "config/config.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "config/device_set.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::string& yaml, const fs::path& base = "/nonexistent") {
  try {
    DeviceManager manager(base);
    run_blocking(build_devices(parse_config(yaml, "c.yaml", base), manager));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, ParsesTheDesignExample) {
  Config c = parse_config(R"(
listen: [ "tcp://127.0.0.1:10809", "unix:///run/dmnbd/nbd.sock", "tcp://[::1]:1234" ]
files:
  - { path: data/disk0.img, size: 1GiB }
devices:
  - name: demo
    description: linear disk with a zero tail
    read_only: true
    table: |
      0 1048576 linear data/disk0.img 0
      1048576 1048576 zero
  - name: top
    table: "0 1048576 linear demo 0"
)",
                          "c.yaml", "/base");
  ASSERT_EQ(c.listen.size(), 3u);
  EXPECT_EQ(c.listen[0].host, "127.0.0.1");
  EXPECT_EQ(c.listen[0].port, 10809);
  EXPECT_EQ(c.listen[1].path, "/run/dmnbd/nbd.sock");
  EXPECT_EQ(c.listen[2].host, "::1");
  ASSERT_EQ(c.files.size(), 1u);
  EXPECT_EQ(c.files[0].path, "/base/data/disk0.img");
  EXPECT_EQ(c.files[0].size, 1ull << 30);
  ASSERT_EQ(c.devices.size(), 2u);
  EXPECT_TRUE(c.devices[0].read_only);
  EXPECT_EQ(c.devices[0].description, "linear disk with a zero tail");
  EXPECT_EQ(c.devices[0].table_first_line, 10);  // the line after "table: |"
  EXPECT_EQ(c.devices[1].table_first_line, 13);
}

TEST(Config, Sizes) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_size("2G"), 2ull << 30);
  EXPECT_EQ(parse_size("1TiB"), 1ull << 40);
  EXPECT_EQ(parse_size("8s"), 4096u);
  EXPECT_THROW(parse_size("1.5G"), std::invalid_argument);
  EXPECT_THROW(parse_size("GiB"), std::invalid_argument);
  EXPECT_THROW(parse_size("10 furlongs"), std::invalid_argument);
  EXPECT_THROW(parse_size("99999999999TiB"), std::invalid_argument);
}

TEST(Config, ListenAddresses) {
  EXPECT_THROW(parse_listen_address("http://x:1"), std::invalid_argument);
  EXPECT_THROW(parse_listen_address("tcp://localhost"), std::invalid_argument);
  EXPECT_THROW(parse_listen_address("tcp://localhost:99999"), std::invalid_argument);
  EXPECT_THROW(parse_listen_address("unix://"), std::invalid_argument);
}

TEST(Config, ErrorsNameFileLineAndReason) {
  EXPECT_EQ(error_of("devices: [\n"), error_of("devices: [\n"));
  EXPECT_EQ(error_of("devices:\n  - name: a\n    tabel: x\n"),
            "c.yaml:3: unknown key 'tabel' in a device entry");
  EXPECT_EQ(error_of("devices: []\n"), "c.yaml:1: 'devices' must be a non-empty list");
  EXPECT_EQ(
      error_of(
          "devices:\n  - name: a\n    table: '0 8 zero'\n  - name: a\n    table: '0 8 zero'\n"),
      "c.yaml:4: device 'a' defined twice");
  EXPECT_EQ(
      error_of(
          "files:\n  - { path: x.img, size: 1Q }\ndevices:\n  - {name: a, table: '0 8 zero'}\n"),
      "c.yaml:2: invalid size unit in '1Q' (use B, KiB, MiB, GiB, TiB or s)");
  EXPECT_EQ(error_of("listen: [ 'tcp://nope' ]\ndevices:\n  - {name: a, table: '0 8 zero'}\n"),
            "c.yaml:1: listen address needs a port: 'tcp://nope'");
  EXPECT_EQ(error_of("devices:\n  - name: a\n    read_only: maybe\n    table: '0 8 zero'\n"),
            "c.yaml:3: read_only must be true or false");
  EXPECT_NE(error_of("devices: [\n").find("c.yaml:"), std::string::npos);
}

TEST(Config, TableErrorsPointAtTheConfigLine) {
  const std::string yaml =
      "devices:\n"
      "  - name: d\n"
      "    table: |\n"
      "      0 8 zero\n"
      "      # comment\n"
      "      16 8 zero\n";
  EXPECT_EQ(error_of(yaml), "c.yaml:6: device d: table line 3: zero: Gap in table");
  EXPECT_EQ(error_of("devices:\n  - name: d\n    table: '0 8 frobnicate'\n"),
            "c.yaml:3: device d: table line 1: frobnicate: unknown target type");
}

TEST(DeviceSet, CreatesMissingFilesSparseAndBuildsStacks) {
  test::TempDir dir;
  DeviceManager manager(dir.path());
  run_blocking(build_devices(parse_config(R"(
files:
  - { path: sub/disk.img, size: 1MiB }
devices:
  - name: top
    table: "0 100 linear base 10"
  - name: base
    table: |
      0 2048 linear sub/disk.img 0
)",
                                          "c.yaml", dir.path()),
                             manager));
  auto devices = manager.list();
  ASSERT_EQ(devices.size(), 2u);
  EXPECT_EQ(devices[0]->name(), "base");  // created first: top stacks on it
  EXPECT_EQ(manager.find("top")->size_bytes(), 100u * 512);
  EXPECT_EQ(manager.find("base")->open_count(), 1);  // held by top's table
  EXPECT_EQ(fs::file_size(dir / "sub/disk.img"), 1u << 20);
  struct stat st {};
  ASSERT_EQ(stat((dir / "sub/disk.img").c_str(), &st), 0);
  EXPECT_EQ(st.st_blocks, 0);  // sparse
}

TEST(DeviceSet, NeverResizesAnExistingFile) {
  test::TempDir dir;
  test::make_patterned_file(dir / "disk.img", 4096, 7);
  DeviceManager manager(dir.path());
  run_blocking(
      build_devices(parse_config("files:\n  - { path: disk.img, size: 1MiB }\ndevices:\n  - {name: "
                                 "a, table: '0 8 linear disk.img 0'}\n",
                                 "c.yaml", dir.path()),
                    manager));
  EXPECT_EQ(fs::file_size(dir / "disk.img"), 4096u);
  EXPECT_EQ(static_cast<uint8_t>(test::read_file_bytes(dir / "disk.img")[0]), 7);
}

TEST(DeviceSet, InvalidConfigLeavesNothingBehind) {
  test::TempDir dir;
  const std::string msg = error_of(
      "files:\n  - { path: new/disk.img, size: 1MiB }\ndevices:\n  - name: a\n    table: '0 8 "
      "linear new/disk.img x'\n",
      dir.path());
  EXPECT_EQ(msg, "c.yaml:5: device a: table line 1: linear: Invalid device sector");
  EXPECT_FALSE(fs::exists(dir / "new/disk.img"));
  EXPECT_FALSE(fs::exists(dir / "new"));
}

TEST(DeviceSet, RefusesStackingCycles) {
  test::TempDir dir;
  const std::string msg = error_of(
      "devices:\n  - {name: a, table: '0 8 linear b 0'}\n  - {name: b, table: '0 8 linear a 0'}\n",
      dir.path());
  EXPECT_EQ(msg, "c.yaml:2: device a: stacked devices form a cycle: a -> b -> a");
}

// A device named like a word of its own table is no reference to itself.
TEST(DeviceSet, ADeviceNamedLikeAWordOfItsTableLoads) {
  test::TempDir dir;
  DeviceManager manager(dir.path());
  run_blocking(build_devices(
      parse_config(
          "files:\n  - { path: a.img, size: 1MiB }\n  - { path: b.img, size: 1MiB }\n"
          "devices:\n  - {name: raid1, table: '0 2048 raid raid1 1 0 2 - a.img - b.img'}\n",
          "c.yaml", dir.path()),
      manager));
  ASSERT_NE(manager.find("raid1"), nullptr);
  EXPECT_EQ(manager.find("raid1")->size_bytes(), 2048u * 512);
}

}  // namespace
}  // namespace dmnbd

namespace dmnbd {
namespace {

// A config whose crypt table holds its key must not be readable by others;
// one that names a keyring key may be.
TEST(Config, AnInlineCryptKeyNeedsAConfigOnlyItsOwnerReads) {
  test::TempDir dir;
  const auto path = dir / "c.yaml";
  auto write = [&](const std::string& key, fs::perms perms) {
    std::ofstream(path) << "devices:\n  - name: secret\n    table: '0 8 crypt aes-cbc-plain " +
                               key + " 0 a.img 0'\n";
    fs::permissions(path, perms);
  };
  const std::string hex(64, 'a');
  write(hex, fs::perms::owner_read | fs::perms::owner_write | fs::perms::others_read);
  try {
    load_config_file(path);
    ADD_FAILURE() << "loaded";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(":2: device 'secret' has a crypt key in its table and the config is "
                       "readable by other users (mode 0604): chmod 600 "),
              std::string::npos)
        << msg;
    EXPECT_EQ(msg.find(hex), std::string::npos) << "the key is in the error";
  }
  write(hex, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_NO_THROW(load_config_file(path));
  write(":32:user:my-key", fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                               fs::perms::others_read);
  EXPECT_NO_THROW(load_config_file(path));
}

}  // namespace
}  // namespace dmnbd
