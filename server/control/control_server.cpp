#include "control_server.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

#include "commands.hpp"
#include "dmnbd/secret_bytes.hpp"

namespace dmnbd::control {
namespace {

// A string field of a request for the log, whatever the client sent.
std::string field_text(const json& request, const char* key) {
  if (!request.is_object()) return "?";
  auto it = request.find(key);
  return it != request.end() && it->is_string() ? it->get<std::string>() : "";
}

constexpr size_t kMaxRequestBytes = 1 << 20;  // tables are text; 1 MiB is plenty
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

// Only the server's own user (or root) may drive it.
// Built outside the coroutine: GCC 12 cannot keep brace-initialised JSON in a
// coroutine frame.
json error_response(int err, const char* what) {
  return json{{"ok", false}, {"error", what}, {"errno", err}};
}

bool peer_allowed(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  return cred.uid == 0 || cred.uid == geteuid();
}

}  // namespace

ControlServer::ControlServer(asio::io_context& ctx, DeviceManager& devices,
                             std::filesystem::path path)
    : ctx_(ctx), devices_(devices), path_(std::move(path)), acceptor_(ctx) {}

ControlServer::~ControlServer() {
  stop();
}

void ControlServer::start() {
  std::error_code ec;
  std::filesystem::create_directories(path_.parent_path(), ec);
  if (std::filesystem::exists(path_, ec)) {
    if (!std::filesystem::is_socket(path_, ec))
      throw std::runtime_error("control socket " + path_.string() + " exists and is not a socket");
    Socket probe(ctx_);
    boost::system::error_code connect_ec;
    probe.connect(path_.string(), connect_ec);
    if (!connect_ec)
      throw std::runtime_error("another dmnbd is using the control socket " + path_.string() +
                               " (set 'control:' in the config)");
    std::filesystem::remove(path_, ec);
  }
  acceptor_.open();
  acceptor_.bind(path_.string());
  bound_ = true;
  // Restrict before listen(), so no other user can ever connect.
  if (chmod(path_.c_str(), 0600) != 0)
    throw std::runtime_error("cannot chmod the control socket " + path_.string());
  acceptor_.listen();
  asio::co_spawn(ctx_, accept_loop(), asio::detached);
  spdlog::info("control socket {}", path_.string());
}

void ControlServer::stop() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  for (auto& c : clients_) c->close(ignored);
  clients_.clear();
  if (bound_) {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
    bound_ = false;
  }
}

Task<void> ControlServer::accept_loop() {
  while (acceptor_.is_open()) {
    auto [ec, sock] = co_await acceptor_.async_accept(kTuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
      continue;
    }
    auto client = std::make_shared<Socket>(std::move(sock));
    clients_.insert(client);
    asio::co_spawn(ctx_, serve(client),
                   [this, client](std::exception_ptr) { clients_.erase(client); });
  }
}

Task<void> ControlServer::serve(std::shared_ptr<Socket> socket) {
  auto reply = [&](const json& response) -> Task<bool> {
    std::string line = response.dump() + "\n";
    auto [ec, n] = co_await asio::async_write(*socket, asio::buffer(line), kTuple);
    co_return !ec;
  };
  if (!peer_allowed(socket->native_handle())) {
    co_await reply(error_response(EACCES, "permission denied"));
    co_return;
  }
  std::string buffer;
  for (;;) {
    auto [ec, n] = co_await asio::async_read_until(
        *socket, asio::dynamic_buffer(buffer, kMaxRequestBytes), '\n', kTuple);
    if (ec == asio::error::not_found) {  // the line outgrew the limit: no way to resync
      co_await reply(error_response(E2BIG, "request longer than 1 MiB"));
      co_return;
    }
    if (ec) co_return;
    std::string line = buffer.substr(0, n - 1);
    wipe_memory(buffer.data(), n);  // the request's text may hold a key
    buffer.erase(0, n);
    json request = json::parse(line, nullptr, false);
    wipe_memory(line.data(), line.size());
    json response;
    if (request.is_discarded()) {
      response = error_response(EINVAL, "malformed JSON");
    } else {
      // Only the verb and the device: tables and messages may hold keys.
      const std::string what = field_text(request, "cmd") + " " + field_text(request, "name");
      spdlog::debug("control: {}", what);
      response = co_await execute(devices_, request);
      wipe_strings(request);
      if (!response.value("ok", false))
        spdlog::warn("control: {} failed: {}", what, response.value("error", ""));
    }
    if (!co_await reply(response)) co_return;
  }
}

}  // namespace dmnbd::control
