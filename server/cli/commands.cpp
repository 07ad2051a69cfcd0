// dmsetup's verbs on the command line, printed the way dmsetup prints them.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "cli.hpp"
#include "control_client.hpp"
#include "dmnbd/secret_bytes.hpp"
#include "dmnbd/target.hpp"
#include "luks/luks_volume.hpp"
#include "luks_passphrase.hpp"
#include "thin_check.hpp"

namespace dmnbd::cli {
namespace {

using json = nlohmann::json;

struct Options {
  std::string control;
  bool json_output = false;
  std::string name, new_name, table_file, table_text, description;
  bool read_only = false, noflush = false, nolockfs = false, force = false, tree = false,
       showkeys = false, inactive = false, no_table = false;
  uint64_t sector = 0, event_nr = 0;
  double timeout = 0;
  std::vector<std::string> words;
  // snapshot create
  std::string origin, cow;
  uint64_t cow_size = 0, chunk = 8;
  bool transient = false;
  // thin
  std::string pool, meta, data, of;
  uint64_t block_size = 128, meta_size = 0, data_size = 0, thin_size = 0;
  // luks open
  std::string volume, key_file;
  bool allow_discards = false;
};

// A request the CLI itself refuses after asking the server (exit status 1).
struct Refused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::filesystem::path control_socket(const Options& o);

// `luks open`: cryptsetup's part is done here, in the CLI, as cryptsetup does
// it before it hands the table to the kernel: the PBKDF runs in this process
// and the passphrase never leaves it; the server gets the table, as `create`.
json luks_open_request(const Options& o) {
  const SecretBytes passphrase = read_luks_passphrase(o.key_file, o.volume);
  const LuksOptions options{.allow_discards = o.allow_discards};
  const LuksTable table = luks_table(o.volume, passphrase.bytes(), options);
  json req{{"cmd", "create"},
           {"name", o.name},
           {"read_only", o.read_only},
           {"description", o.description}};
  req["table"] = table.text();  // one copy, wiped with the request
  return req;
}

// `luks close`: like cryptsetup close, only a device whose table is crypt.
json luks_close_request(const Options& o) {
  const json query{{"cmd", "table"}, {"name", o.name}};
  const json answer = call(control_socket(o), query);
  if (!answer.value("ok", false)) throw Refused(answer.value("error", "failed"));
  for (const auto& device : answer["devices"])
    for (const auto& line : device["lines"]) {
      std::istringstream words(line.get<std::string>());
      std::string start, length, type;
      words >> start >> length >> type;
      if (type != "crypt")
        throw Refused(o.name + " is not a crypt device (its table maps " +
                      (type.empty() ? "nothing" : type) + ")");
    }
  return json{{"cmd", "remove"}, {"name", o.name}};
}

// `thin check`: a file is checked here; a pool's name is asked for its
// metadata file, which is checked once the pool is suspended.
int run_thin_check(const Options& o) {
  std::error_code ec;
  if (std::filesystem::exists(o.meta, ec)) return thin_check(o.meta, std::cout, std::cerr);
  try {
    const json answer = call(control_socket(o), json{{"cmd", "table"}, {"name", o.meta}});
    if (!answer.value("ok", false)) throw Refused(answer.value("error", "failed"));
    std::string start, length, type, metadata;
    for (const auto& device : answer["devices"])
      for (const auto& line : device["lines"]) {
        std::istringstream words(line.get<std::string>());
        words >> start >> length >> type >> metadata;
      }
    if (type != "thin-pool") throw Refused(o.meta + " is not a thin pool");
    const json info = call(control_socket(o), json{{"cmd", "info"}, {"name", o.meta}});
    bool suspended = false;
    for (const auto& device : info.value("devices", json::array()))
      suspended = suspended || device.value("state", "") == "SUSPENDED";
    if (!suspended)
      throw Refused(o.meta + " is live: suspend it first (its metadata changes under a check)");
    std::filesystem::path path(metadata);
    if (!std::filesystem::exists(path, ec))
      throw Refused("the metadata " + metadata + " is not a file here: give its path");
    return thin_check(metadata, std::cout, std::cerr);
  } catch (const Unreachable& e) {
    std::cerr << "dmnbd: " << e.what() << "\n";
    return 3;
  } catch (const Refused& e) {
    std::cerr << "dmnbd thin check: " << e.what() << "\n";
    return 1;
  }
}

std::string read_table(const Options& o) {
  if (!o.table_text.empty()) return o.table_text;
  std::stringstream text;
  if (!o.table_file.empty() && o.table_file != "-") {
    std::ifstream in(o.table_file);
    if (!in) throw std::runtime_error("cannot read table file " + o.table_file);
    text << in.rdbuf();
  } else if (!o.table_file.empty() || !isatty(STDIN_FILENO)) {
    text << std::cin.rdbuf();
  } else {
    throw std::runtime_error("no table given: name a file, use --table '...', or pipe it in");
  }
  return text.str();
}

std::string dev_label(const json& ref) {
  if (ref.contains("path")) return ref["path"].get<std::string>();
  return ref["name"].get<std::string>() + " (" + std::to_string(ref["major"].get<int>()) + ":" +
         std::to_string(ref["minor"].get<int>()) + ")";
}

void print_lines(const json& response, bool prefix_names) {
  const auto& devices = response["devices"];
  if (devices.empty()) std::cout << "No devices found\n";
  for (const auto& d : devices)
    for (const auto& line : d["lines"])
      std::cout << (prefix_names ? d["name"].get<std::string>() + ": " : "")
                << line.get<std::string>() << "\n";
}

// dmsetup's _display_info_long layout.
void print_info(const json& response) {
  const auto& devices = response["devices"];
  if (devices.empty()) std::cout << "No devices found\n";
  bool first = true;
  for (const auto& d : devices) {
    if (!first) std::cout << "\n";
    first = false;
    auto field = [](const char* label, const std::string& value) {
      std::printf("%-19s%s\n", label, value.c_str());
    };
    const bool live = d["live_table"], inactive = d["inactive_table"];
    std::string state =
        d["state"].get<std::string>() + (d["read_only"].get<bool>() ? " (READ-ONLY)" : "");
    std::string tables = live && inactive ? "LIVE & INACTIVE"
                         : live           ? "LIVE"
                         : inactive       ? "INACTIVE"
                                          : "None";
    field("Name:", d["name"]);
    field("State:", state);
    field("Read Ahead:", "256");
    field("Tables present:", tables);
    field("Open count:", std::to_string(d["open_count"].get<int>()));
    field("Event number:", std::to_string(d["event_nr"].get<uint64_t>()));
    field("Major, minor:",
          std::to_string(d["major"].get<int>()) + ", " + std::to_string(d["minor"].get<int>()));
    field("Number of targets:", std::to_string(d["targets"].get<size_t>()));
  }
  std::fflush(stdout);
}

void print_deps(const json& response, bool prefix_names) {
  for (const auto& d : response["devices"]) {
    if (prefix_names) std::cout << d["name"].get<std::string>() << ": ";
    std::cout << d["deps"].size() << " dependencies\t:";
    for (const auto& dep : d["deps"]) {
      if (dep.contains("path"))
        std::cout << " (" << dep["path"].get<std::string>() << ")";
      else
        std::cout << " (" << dep["major"].get<int>() << ", " << dep["minor"].get<int>() << ")";
    }
    std::cout << "\n";
  }
}

void print_tree(const json& devices, const json& node, const std::string& indent, bool last,
                bool root) {
  std::cout << (root ? "" : indent + (last ? " └─" : " ├─")) << dev_label(node) << "\n";
  if (!node.contains("name")) return;
  const json* entry = nullptr;
  for (const auto& d : devices)
    if (d["name"] == node["name"]) entry = &d;
  if (!entry) return;
  const auto& deps = (*entry)["deps"];
  for (size_t i = 0; i < deps.size(); ++i)
    print_tree(devices, deps[i], root ? "" : indent + (last ? "   " : " │ "), i + 1 == deps.size(),
               false);
}

void print_ls(const json& response, bool tree) {
  const auto& devices = response["devices"];
  if (devices.empty()) {
    std::cout << "No devices found\n";
    return;
  }
  if (!tree) {
    for (const auto& d : devices)
      std::cout << d["name"].get<std::string>() << "\t(" << d["major"].get<int>() << ":"
                << d["minor"].get<int>() << ")\n";
    return;
  }
  std::set<std::string> used;
  for (const auto& d : devices)
    for (const auto& dep : d["deps"])
      if (dep.contains("name")) used.insert(dep["name"]);
  for (const auto& d : devices)
    if (!used.count(d["name"])) print_tree(devices, d, "", true, true);
}

void print_targets(const json& targets) {
  for (const auto& t : targets) {
    const auto& v = t["version"];
    std::printf("%-16s v%d.%d.%d\n", t["name"].get<std::string>().c_str(), v[0].get<int>(),
                v[1].get<int>(), v[2].get<int>());
  }
  std::fflush(stdout);
}

json local_targets() {
  json out = json::array();
  for (const auto* t : TargetRegistry::instance().all())
    out.push_back(
        {{"name", t->name}, {"version", {t->version.major, t->version.minor, t->version.patch}}});
  return out;
}

}  // namespace

std::filesystem::path default_data_dir() {
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg)
    return std::filesystem::path(xdg) / "dmnbd";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::filesystem::path(home) / ".local/share/dmnbd";
  return std::filesystem::current_path() / "dmnbd-data";
}

std::filesystem::path default_control_path() {
  if (const char* env = std::getenv("DMNBD_CONTROL"); env && *env) return env;
  return default_data_dir() / "control.sock";
}

namespace {
std::filesystem::path control_socket(const Options& o) {
  return o.control.empty() ? default_control_path() : std::filesystem::path(o.control);
}
}  // namespace

std::function<int()> add_control_commands(CLI::App& app) {
  auto o = std::make_shared<Options>();
  app.add_option("--control", o->control,
                 "Control socket (default: $DMNBD_CONTROL, else the demo's " +
                     default_data_dir().string() + "/control.sock)");
  app.add_flag("--json", o->json_output, "Print the server's JSON response");

  // One row per verb: its subcommand, how its request is made, and how its
  // answer is printed (nothing, for the verbs dmsetup is silent about).
  using Printer = std::function<void(const json& response)>;
  // `explain` rewords the server's refusal, for verbs whose request the CLI made.
  using Explain = std::function<std::string(const std::string& error)>;
  struct Verb {
    CLI::App* sub;
    std::function<json()> request;
    Printer print;
    Explain explain;
  };
  std::vector<Verb> verbs;
  auto verb_of = [&](
                     CLI::App& parent, const std::string& name, const std::string& help,
                     std::function<json()> request, Printer print = [](const json&) {},
                     Explain explain = nullptr) {
    CLI::App* sub = parent.add_subcommand(name, help);
    verbs.push_back({sub, std::move(request), std::move(print), std::move(explain)});
    return sub;
  };
  auto verb = [&](
                  const std::string& name, const std::string& help, std::function<json()> request,
                  Printer print = [](const json&) {}) {
    return verb_of(app, name, help, std::move(request), std::move(print));
  };
  auto named = [o](const char* cmd) {
    return [o, cmd] { return json{{"cmd", cmd}, {"name", o->name}}; };
  };
  auto with_table = [o](const char* cmd) {
    return [o, cmd] { return json{{"cmd", cmd}, {"name", o->name}, {"table", read_table(*o)}}; };
  };

  auto* create = verb("create", "Create a device from a table and resume it (load + resume)", [o] {
    json req{{"cmd", "create"},
             {"name", o->name},
             {"read_only", o->read_only},
             {"description", o->description}};
    if (o->no_table)
      req["notable"] = true;
    else
      req["table"] = read_table(*o);
    return req;
  });
  create->add_option("name", o->name, "Device (export) name")->required();
  create->add_option("table_file", o->table_file, "Table file ('-' or none: stdin)");
  create->add_option("--table", o->table_text, "The table text itself");
  create->add_flag("--readonly,-r", o->read_only, "A read-only device");
  create->add_option("--description", o->description, "Description shown by NBD LIST");
  create->add_flag("--notable", o->no_table, "Create without a table (load + resume later)");

  for (const char* cmd : {"load", "reload"}) {
    auto* sub = verb(cmd,
                     std::string(cmd) == std::string("load")
                         ? "Load a table into the inactive slot"
                         : "Load a table and swap it in (load + suspend + resume)",
                     with_table(cmd));
    sub->add_option("name", o->name, "Device name")->required();
    sub->add_option("table_file", o->table_file, "Table file ('-' or none: stdin)");
    sub->add_option("--table", o->table_text, "The table text itself");
  }
  verb("clear", "Drop the inactive table", named("clear"))->add_option("name", o->name)->required();
  auto* suspend = verb("suspend", "Hold new I/O, drain what is in flight, flush", [o] {
    return json{{"cmd", "suspend"}, {"name", o->name}, {"noflush", o->noflush}};
  });
  suspend->add_option("name", o->name)->required();
  suspend->add_flag("--noflush", o->noflush, "Do not flush the backing devices");
  suspend->add_flag("--nolockfs", o->nolockfs,
                    "Accepted for dmsetup compatibility (no filesystem to freeze here)");
  verb("resume", "Swap in the inactive table, if any, and let I/O through", named("resume"))
      ->add_option("name", o->name)
      ->required();
  auto* remove = verb("remove", "Remove a device (refused while open unless --force)", [o] {
    return json{{"cmd", "remove"}, {"name", o->name}, {"force", o->force}};
  });
  remove->add_option("name", o->name)->required();
  remove->add_flag("--force,-f", o->force, "Swap in an error table first, then remove");
  auto* rename = verb("rename", "Rename a device (and its export)", [o] {
    return json{{"cmd", "rename"}, {"name", o->name}, {"new_name", o->new_name}};
  });
  rename->add_option("name", o->name)->required();
  rename->add_option("new_name", o->new_name)->required();

  const std::map<std::string, Printer> show_printers = {
      {"table", [o](const json& r) { print_lines(r, o->name.empty()); }},
      {"status", [o](const json& r) { print_lines(r, o->name.empty()); }},
      {"info", [](const json& r) { print_info(r); }},
      {"deps", [o](const json& r) { print_deps(r, o->name.empty()); }},
  };
  for (const char* cmd : {"table", "status", "info", "deps"}) {
    auto* sub = verb(
        cmd, "Show a device's (or every device's) " + std::string(cmd),
        [o, cmd] {
          json req{{"cmd", cmd}};
          if (!o->name.empty()) req["name"] = o->name;
          if (o->inactive) req["inactive"] = true;
          if (o->showkeys) req["showkeys"] = true;
          return req;
        },
        show_printers.at(cmd));
    sub->add_option("name", o->name, "Device name (default: all)");
    if (std::string(cmd) == "table") {
      sub->add_flag("--showkeys", o->showkeys, "Show crypt keys instead of zeroes");
      sub->add_flag("--inactive", o->inactive, "Show the inactive table");
    }
  }
  verb(
      "ls", "List devices",
      [o] {
        return json{{"cmd", "ls"}};
      },
      [o](const json& r) { print_ls(r, o->tree); })
      ->add_flag("--tree", o->tree, "Show the stacking as a tree");
  auto* message = verb(
      "message", "Send a message to the target at SECTOR",
      [o] {
        return json{
            {"cmd", "message"}, {"name", o->name}, {"sector", o->sector}, {"words", o->words}};
      },
      [](const json& r) {
        if (!r.value("output", "").empty()) std::cout << r["output"].get<std::string>() << "\n";
      });
  message->add_option("name", o->name)->required();
  message->add_option("sector", o->sector)->required();
  message->add_option("words", o->words)->required();
  verb(
      "targets", "List target types and versions",
      [] {
        return json{{"cmd", "targets"}};
      },
      [](const json& r) { print_targets(r["targets"]); });
  auto* wait = verb("wait", "Wait until the event counter exceeds EVENT_NR", [o] {
    return json{{"cmd", "wait"},
                {"name", o->name},
                {"event_nr", o->event_nr},
                {"timeout_ms", static_cast<uint64_t>(o->timeout * 1000)}};
  });
  wait->add_option("name", o->name)->required();
  wait->add_option("event_nr", o->event_nr, "Event number to wait past (default 0)");
  wait->add_option("--timeout", o->timeout, "Give up after this many seconds (default: never)");

  // Snapshots as lvcreate -s and lvremove make them (the README's walk-through).
  CLI::App* snapshot =
      app.add_subcommand("snapshot", "Create or remove a snapshot of a device, as LVM does");
  snapshot->require_subcommand(1);
  auto* snap_create = verb_of(
      *snapshot, "create",
      "Snapshot ORIGIN as NAME: suspend ORIGIN, move its table to ORIGIN-real, put "
      "snapshot-origin over it, create NAME, resume",
      [o] {
        return json{{"cmd", "snapshot-create"},
                    {"name", o->name},
                    {"origin", o->origin},
                    {"cow", o->cow},
                    {"size", o->cow_size},
                    {"chunk", o->chunk},
                    {"store", o->transient ? "N" : "P"}};
      },
      [](const json& r) { std::cout << r["table"].get<std::string>() << "\n"; });
  snap_create->add_option("name", o->name, "The snapshot device to create")->required();
  snap_create->add_option("origin", o->origin, "The device to snapshot")->required();
  snap_create->add_option("--cow", o->cow, "COW file (created if missing) or device")->required();
  snap_create->add_option("--size", o->cow_size, "Size of a new COW file (e.g. 1G, 512M)")
      ->transform(CLI::AsSizeValue(false));
  snap_create->add_option("--chunk", o->chunk, "Chunk size in sectors (default 8: 4 KiB)")
      ->check(CLI::PositiveNumber);
  auto* persistent = snap_create->add_flag(
      "--persistent", [](int64_t) {}, "Keep exceptions on the COW (P, the default)");
  snap_create->add_flag("--transient", o->transient, "Keep exceptions in memory only (N)")
      ->excludes(persistent);
  verb_of(
      *snapshot, "merge",
      "Merge snapshot NAME back into its origin (the origin stays usable meanwhile); returns "
      "when done, the origin mapping its own table again",
      [o] {
        return json{{"cmd", "snapshot-merge"}, {"name", o->name}};
      },
      [](const json& r) { std::cout << r["table"].get<std::string>(); })
      ->add_option("name", o->name, "The snapshot device")
      ->required();
  verb_of(*snapshot, "remove",
          "Remove snapshot NAME; with its origin's last snapshot gone, the origin maps its own "
          "table again",
          [o] {
            return json{{"cmd", "snapshot-remove"}, {"name", o->name}};
          })
      ->add_option("name", o->name, "The snapshot device")
      ->required();

  // Thin volumes as lvcreate --thin and lvremove make them (the README's walk-through).
  CLI::App* thin = app.add_subcommand("thin", "Thin pools and volumes, as LVM makes them");
  thin->require_subcommand(1);
  auto print_table = [](const json& r) { std::cout << r["table"].get<std::string>() << "\n"; };
  auto* create_pool = verb_of(
      *thin, "create-pool",
      "Create pool NAME on a metadata and a data file (made, zeroed, when missing and sized), "
      "over all of the data file's whole blocks",
      [o] {
        return json{{"cmd", "thin-create-pool"},
                    {"name", o->name},
                    {"meta", o->meta},
                    {"data", o->data},
                    {"block_size", o->block_size},
                    {"meta_size", o->meta_size},
                    {"data_size", o->data_size}};
      },
      print_table);
  create_pool->add_option("name", o->name, "The pool device to create")->required();
  create_pool->add_option("--meta", o->meta, "Metadata file or device")->required();
  create_pool->add_option("--data", o->data, "Data file or device")->required();
  create_pool->add_option("--block-size", o->block_size, "Data block in sectors (default 128)");
  create_pool->add_option("--meta-size", o->meta_size, "Size of a new metadata file (e.g. 16M)")
      ->transform(CLI::AsSizeValue(false));
  create_pool->add_option("--data-size", o->data_size, "Size of a new data file (e.g. 10G)")
      ->transform(CLI::AsSizeValue(false));
  auto* thin_create = verb_of(
      *thin, "create", "Create thin volume NAME of SIZE on POOL (the next free device id)",
      [o] {
        return json{
            {"cmd", "thin-create"}, {"name", o->name}, {"pool", o->pool}, {"size", o->thin_size}};
      },
      print_table);
  thin_create->add_option("name", o->name, "The thin device to create")->required();
  thin_create->add_option("--pool", o->pool, "The pool device")->required();
  thin_create->add_option("--size", o->thin_size, "Its size (e.g. 1G)")
      ->required()
      ->transform(CLI::AsSizeValue(false));
  auto* thin_snap = verb_of(
      *thin, "snapshot",
      "Snapshot thin volume THIN as NAME: suspend THIN, create_snap, resume, create NAME",
      [o] {
        return json{{"cmd", "thin-snapshot"}, {"name", o->name}, {"of", o->of}};
      },
      print_table);
  thin_snap->add_option("name", o->name, "The snapshot device to create")->required();
  thin_snap->add_option("--of", o->of, "The thin volume to snapshot")->required();
  verb_of(*thin, "remove", "Remove thin volume NAME and delete its device id from its pool",
          [o] {
            return json{{"cmd", "thin-remove"}, {"name", o->name}};
          })
      ->add_option("name", o->name, "The thin device")
      ->required();
  CLI::App* thin_check_cmd = thin->add_subcommand(
      "check",
      "Check a pool's metadata (a file or device, or POOL's metadata file when the pool is "
      "suspended): every reference count, both space maps, the trees; no server needed for a file");
  thin_check_cmd->add_option("metadata", o->meta, "Metadata file or device, or a pool's name")
      ->required();

  // LUKS volumes, opened and closed as cryptsetup open and close do.
  CLI::App* luks =
      app.add_subcommand("luks", "Open or close a LUKS volume made by cryptsetup luksFormat");
  luks->require_subcommand(1);
  auto* luks_open = verb_of(
      *luks, "open",
      "Unlock the LUKS1/LUKS2 volume FILE and create device NAME with the crypt table "
      "cryptsetup would load (the passphrase: --key-file, else typed, else one line of stdin)",
      [o] { return luks_open_request(*o); }, [](const json&) {},
      [o](const std::string& error) {
        // The table is ours: a refusal of it is about the volume.
        const std::string line_one = "line 1: ";
        return error.starts_with(line_one) ? o->volume + ": " + error.substr(line_one.size())
                                           : error;
      });
  luks_open->add_option("file", o->volume, "The LUKS volume (a file or block device)")->required();
  luks_open->add_option("name", o->name, "Device (export) name")->required();
  luks_open->add_option("--key-file,-d", o->key_file,
                        "The passphrase: the whole file, newlines and all ('-': all of stdin)");
  luks_open->add_flag("--readonly,-r", o->read_only, "A read-only device");
  luks_open->add_flag("--allow-discards", o->allow_discards,
                      "Pass discards down to FILE (allow_discards)");
  luks_open->add_option("--description", o->description, "Description shown by NBD LIST");
  verb_of(*luks, "close", "Remove crypt device NAME (refused for any other device)",
          [o] { return luks_close_request(*o); })
      ->add_option("name", o->name, "The crypt device")
      ->required();

  return [o, verbs, thin_check_cmd] {
    if (*thin_check_cmd) return run_thin_check(*o);
    for (const auto& [sub, make_request, print, explain] : verbs) {
      if (!*sub) continue;
      const CLI::App* parent = sub->get_parent();
      const std::string cmd =
          (parent && parent->get_parent() ? parent->get_name() + " " : "") + sub->get_name();
      json response;
      try {
        json request = make_request();
        struct Wipe {
          json& request;
          ~Wipe() { wipe_strings(request); }
        } wipe{request};
        try {
          response = call(control_socket(*o), request);
        } catch (const Unreachable&) {
          if (cmd != "targets") throw;
          response = {{"ok", true}, {"targets", local_targets()}};  // same binary, same targets
        }
      } catch (const Unreachable& e) {
        std::cerr << "dmnbd: " << e.what() << "\n";
        return 3;
      } catch (const Refused& e) {
        std::cerr << "dmnbd " << cmd << ": " << e.what() << "\n";
        return 1;
      } catch (const LuksError& e) {  // a wrong passphrase, not a LUKS volume, ...
        std::cerr << "dmnbd " << cmd << ": " << e.what() << "\n";
        return 1;
      } catch (const std::exception& e) {
        std::cerr << "dmnbd " << cmd << ": " << e.what() << "\n";
        return 2;
      }
      if (o->json_output) std::cout << response.dump(2) << "\n";
      if (!response.value("ok", false)) {
        const std::string error = response.value("error", "failed");
        std::cerr << "dmnbd " << cmd << ": " << (explain ? explain(error) : error) << "\n";
        return 1;
      }
      if (!o->json_output) print(response);
      return 0;
    }
    return -1;
  };
}

}  // namespace dmnbd::cli
