// dmnbd: the device-mapper in userspace, served over NBD.
//   dmnbd serve [CONFIG]      run the server
//   dmnbd <verb> ...          dmsetup's verbs, sent to a running server
//   dmnbd replay-log ...      replay a log-writes log (xfstests' replay-log)
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <filesystem>
#include <iostream>

#include "cli/cli.hpp"
#include "cli/replay_log.hpp"
#include "config/config.hpp"
#include "config/device_set.hpp"
#include "control/control_server.hpp"
#include "demo_config.hpp"
#include "dm/device_manager.hpp"
#include "nbd/server.hpp"
#include "runtime/runtime.hpp"

namespace {

namespace fs = std::filesystem;
using namespace dmnbd;

struct ServeOptions {
  std::string config;
  std::string data_dir;
  std::vector<std::string> listen;
  std::string control;
  unsigned threads = 0;
  unsigned poll_us = 50;
  std::string log_level = "info";
  // Override the config's limits when given.
  std::string connection_payload, server_payload;
  int handshake_limit = -1;
  unsigned max_connections = 0;
};

void apply_limit_overrides(const ServeOptions& opts, ServerLimits& limits) {
  auto size = [](const std::string& text, const char* flag) {
    uint64_t v = 0;
    try {
      v = parse_size(text);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(std::string(flag) + ": " + e.what());
    }
    if (v == 0) throw ConfigError(std::string(flag) + " must be more than 0");
    return v;
  };
  if (!opts.connection_payload.empty())
    limits.connection_payload = size(opts.connection_payload, "--connection-payload");
  if (!opts.server_payload.empty())
    limits.server_payload = size(opts.server_payload, "--server-payload");
  if (opts.handshake_limit >= 0) limits.handshake_seconds = unsigned(opts.handshake_limit);
  if (opts.max_connections > 0) limits.max_connections = opts.max_connections;
}

// On the main loop: the devices first (their targets' background jobs then
// run on this loop), then the control socket and the listeners.
Task<void> start_serving(const Config& config, DeviceManager& devices,
                         control::ControlServer& control, nbd::Server& server) {
  co_await build_devices(config, devices);
  for (const auto& device : devices.list())
    spdlog::info("device {}: {} sectors ({} bytes){}", device->name(), device->sectors(),
                 device->size_bytes(), device->read_only() ? ", read-only" : "");
  control.start();
  server.start();
}

int serve(const ServeOptions& opts) {
  spdlog::set_level(spdlog::level::from_str(opts.log_level));
  Config config;
  if (opts.config.empty()) {
    const fs::path data = opts.data_dir.empty() ? cli::default_data_dir() : fs::path(opts.data_dir);
    config = parse_config(kDemoConfigYaml, "<built-in demo config>", fs::absolute(data));
    spdlog::info("no config given: serving the built-in demo, data in {}", data.string());
  } else {
    config = load_config_file(opts.config);
  }
  if (!opts.listen.empty()) {
    config.listen.clear();
    for (const auto& text : opts.listen) config.listen.push_back(parse_listen_address(text));
  }
  if (!opts.control.empty()) config.control = fs::absolute(opts.control);
  apply_limit_overrides(opts, config.limits);

  const ServerLimits& limits = config.limits;
  spdlog::info(
      "limits: {} MiB of payload in flight per connection, {} MiB in all, handshake {} s, "
      "{} connections",
      limits.connection_payload >> 20, limits.server_payload >> 20, limits.handshake_seconds,
      limits.max_connections);
  DeviceManager devices(config.base_dir);
  runtime::Runtime runtime(opts.threads, std::chrono::microseconds(opts.poll_us));
  devices.set_remote_loops([&runtime] { return runtime.next_worker().get_executor(); });
  nbd::Server server({.accept = runtime.worker(0),
                      .next = [&runtime]() -> asio::io_context& { return runtime.next_worker(); }},
                     devices, config.listen, limits);
  control::ControlServer control(runtime.main_context(), devices, config.control);
  runtime.start();
  // The first SIGINT or SIGTERM: no new connections or control requests;
  // every connection finishes its requests; then the targets write their
  // last metadata (log-writes its end mark) and stop their background jobs,
  // on the main loop where those jobs run; then the loops stop.
  runtime.run(start_serving(config, devices, control, server), [&] {
    control.stop();
    server.stop([&] {
      asio::co_spawn(runtime.main_context(), devices.teardown_all(),
                     [&runtime](std::exception_ptr error) {
                       if (error) spdlog::error("tearing the devices down failed");
                       runtime.stop();
                     });
    });
  });
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
  serve_cmd->add_option("--control-socket", serve_opts.control,
                        "Override the config's control socket path");
  serve_cmd->add_option("--threads", serve_opts.threads, "Event loops (default: one per core)");
  serve_cmd
      ->add_option("--poll-us", serve_opts.poll_us,
                   "How long an idle event loop polls before it sleeps, in microseconds; it "
                   "only polls on a CPU nothing else wants (0: never poll)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 10000u));
  serve_cmd->add_option("--connection-payload", serve_opts.connection_payload,
                        "READ/WRITE payload bytes in flight per connection before the server "
                        "stops reading it (default 64MiB)");
  serve_cmd->add_option("--server-payload", serve_opts.server_payload,
                        "The same over all connections together (default 1GiB)");
  serve_cmd
      ->add_option("--handshake-limit", serve_opts.handshake_limit,
                   "Seconds a client may take to negotiate before it is disconnected "
                   "(default 10, 0: no limit)")
      ->check(CLI::Range(0, 1000000));
  serve_cmd
      ->add_option("--max-connections", serve_opts.max_connections,
                   "Connections served at once; more are closed at once (default 512)")
      ->check(CLI::Range(1u, 1000000u));
  serve_cmd->add_option("--log-level", serve_opts.log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  auto run_control_verb = cli::add_control_commands(app);
  auto run_replay_log = cli::add_replay_log_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int status = app.exit(e);
    return status == 0 ? 0 : 2;  // help and --version exit 0; usage errors 2
  }
  try {
    if (*serve_cmd) return serve(serve_opts);
    if (const int status = run_replay_log(); status >= 0) return status;
    return run_control_verb();
  } catch (const ConfigError& e) {
    std::cerr << "dmnbd: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dmnbd: " << e.what() << "\n";
    return 1;
  }
}
