// dmnbd: the device-mapper in userspace, served over NBD.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "demo_config.hpp"
#include "dmnbd/config.hpp"
#include "dmnbd/device_set.hpp"
#include "dmnbd/target.hpp"
#include "nbd/exports.hpp"
#include "nbd/server.hpp"

namespace {

namespace fs = std::filesystem;
using namespace dmnbd;

// Where the built-in demo keeps its backing file: $XDG_DATA_HOME/dmnbd.
fs::path default_data_dir() {
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg) return fs::path(xdg) / "dmnbd";
  if (const char* home = std::getenv("HOME"); home && *home)
    return fs::path(home) / ".local/share/dmnbd";
  return fs::current_path() / "dmnbd-data";
}

struct ServeOptions {
  std::string config;
  std::string data_dir;
  std::vector<std::string> listen;
  unsigned threads = 0;
  std::string log_level = "info";
};

int serve(const ServeOptions& opts) {
  spdlog::set_level(spdlog::level::from_str(opts.log_level));
  Config config;
  if (opts.config.empty()) {
    const fs::path data = opts.data_dir.empty() ? default_data_dir() : fs::path(opts.data_dir);
    config = parse_config(kDemoConfigYaml, "<built-in demo config>", fs::absolute(data));
    spdlog::info("no config given: serving the built-in demo, data in {}", data.string());
  } else {
    config = load_config_file(opts.config);
  }
  if (!opts.listen.empty()) {
    config.listen.clear();
    for (const auto& text : opts.listen) config.listen.push_back(parse_listen_address(text));
  }

  nbd::ExportRegistry exports;
  for (auto& device : build_devices(config)) {
    spdlog::info("device {}: {} sectors ({} bytes){}", device->name(), device->sectors(),
                 device->size_bytes(), device->read_only() ? ", read-only" : "");
    exports.add(std::move(device));
  }

  nbd::Server server(exports, config.listen, opts.threads);
  server.start();
  server.run_until_signal();
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // a client that vanishes must not kill the server
  spdlog::set_default_logger(spdlog::stderr_color_mt("dmnbd"));
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");

  CLI::App app{"dmnbd: the Linux device-mapper in userspace, served over NBD"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dmnbd " DMNBD_VERSION);

  ServeOptions serve_opts;
  auto* serve_cmd =
      app.add_subcommand("serve", "Serve the devices of CONFIG (or the built-in demo)");
  serve_cmd->add_option("config", serve_opts.config, "YAML config file")->check(CLI::ExistingFile);
  serve_cmd->add_option("--data-dir", serve_opts.data_dir,
                        "Data directory of the built-in demo (default $XDG_DATA_HOME/dmnbd)");
  serve_cmd->add_option("--listen", serve_opts.listen,
                        "Override the config's listen addresses (tcp://HOST:PORT, unix:///PATH)");
  serve_cmd->add_option("--threads", serve_opts.threads, "Event loops (default: one per core)");
  serve_cmd->add_option("--log-level", serve_opts.log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  auto* targets_cmd = app.add_subcommand("targets", "List the target types this build provides");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*serve_cmd) return serve(serve_opts);
    if (*targets_cmd) {
      for (const auto* t : TargetRegistry::instance().all())
        std::cout << t->name << std::string(16 - std::min<size_t>(15, t->name.size()), ' ') << "v"
                  << t->version.major << "." << t->version.minor << "." << t->version.patch << "\n";
      return 0;
    }
  } catch (const ConfigError& e) {
    std::cerr << "dmnbd: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dmnbd: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
