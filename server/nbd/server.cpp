#include "server.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <filesystem>

#include "session.hpp"

namespace dmnbd::nbd {

using tcp = asio::ip::tcp;
using local = asio::local::stream_protocol;

// Accepts on one address and hands each connection to a worker loop.
class Server::Listener {
 public:
  Listener(Server& server, const ListenAddress& addr)
      : server_(server), addr_(addr), tcp_(server.loops_.accept), unix_(server.loops_.accept) {}

  void open() {
    if (addr_.kind == ListenAddress::Kind::tcp) {
      tcp::resolver resolver(server_.loops_.accept);
      auto results = resolver.resolve(addr_.host, std::to_string(addr_.port),
                                      tcp::resolver::passive | tcp::resolver::numeric_service);
      tcp::endpoint ep = results.begin()->endpoint();
      tcp_.open(ep.protocol());
      tcp_.set_option(asio::socket_base::reuse_address(true));
      tcp_.bind(ep);
      tcp_.listen();
      asio::co_spawn(tcp_.get_executor(), accept_tcp(), asio::detached);
    } else {
      remove_stale_socket();
      unix_.open();
      unix_.bind(local::endpoint(addr_.path.string()));
      unix_.listen();
      bound_path_ = true;
      asio::co_spawn(unix_.get_executor(), accept_unix(), asio::detached);
    }
  }

  void close() {
    asio::post(tcp_.get_executor(), [this] {
      boost::system::error_code ignored;
      tcp_.close(ignored);
      unix_.close(ignored);
    });
    if (bound_path_) {
      std::error_code ignored;
      std::filesystem::remove(addr_.path, ignored);
      bound_path_ = false;
    }
  }

 private:
  // A socket file left by a crashed server is replaced; a live one is not.
  void remove_stale_socket() {
    std::error_code ec;
    if (!std::filesystem::exists(addr_.path, ec)) return;
    if (!std::filesystem::is_socket(addr_.path, ec))
      throw std::runtime_error(addr_.path.string() + " exists and is not a socket");
    local::socket probe(server_.loops_.accept);
    boost::system::error_code connect_ec;
    probe.connect(local::endpoint(addr_.path.string()), connect_ec);
    if (!connect_ec)
      throw std::runtime_error("another server is listening on " + addr_.path.string());
    std::filesystem::remove(addr_.path, ec);
  }

  Task<void> accept_tcp() {
    for (;;) {
      asio::io_context& loop = server_.loops_.next();
      auto [ec, sock] = co_await tcp_.async_accept(loop, asio::as_tuple(asio::use_awaitable));
      if (ec == asio::error::operation_aborted || !tcp_.is_open()) co_return;
      if (ec) continue;
      boost::system::error_code ignored;
      sock.set_option(tcp::no_delay(true), ignored);
      auto remote = sock.remote_endpoint(ignored);
      std::string peer =
          "tcp:" + remote.address().to_string() + ":" + std::to_string(remote.port());
      auto protocol = sock.local_endpoint(ignored).protocol();
      Socket generic(loop, asio::generic::stream_protocol(protocol.family(), protocol.protocol()),
                     sock.release());
      server_.adopt(std::move(generic), std::move(peer), loop);
    }
  }

  Task<void> accept_unix() {
    for (;;) {
      asio::io_context& loop = server_.loops_.next();
      auto [ec, sock] = co_await unix_.async_accept(loop, asio::as_tuple(asio::use_awaitable));
      if (ec == asio::error::operation_aborted || !unix_.is_open()) co_return;
      if (ec) continue;
      std::string peer = "unix:" + addr_.path.string() + "#" + std::to_string(++accepted_);
      Socket generic(loop, asio::generic::stream_protocol(AF_UNIX, 0), sock.release());
      server_.adopt(std::move(generic), std::move(peer), loop);
    }
  }

  Server& server_;
  ListenAddress addr_;
  tcp::acceptor tcp_;
  local::acceptor unix_;
  bool bound_path_ = false;
  uint64_t accepted_ = 0;
};

Server::Server(ServerLoops loops, DeviceManager& exports, std::vector<ListenAddress> listen,
               ServerLimits limits)
    : loops_(std::move(loops)),
      exports_(exports),
      listen_(std::move(listen)),
      limits_(limits),
      payload_budget_(limits.server_payload) {}

// The loops have stopped by now, so no session or accept runs.
Server::~Server() = default;

void Server::start() {
  for (const ListenAddress& addr : listen_) {
    auto listener = std::make_unique<Listener>(*this, addr);
    try {
      listener->open();
    } catch (const std::exception& e) {
      for (auto& l : listeners_) l->close();
      throw std::runtime_error("cannot listen on " + addr.text + ": " + e.what());
    }
    listeners_.push_back(std::move(listener));
    spdlog::info("listening on {}", addr.text);
  }
}

void Server::adopt(Socket socket, std::string peer, asio::io_context& loop) {
  const SessionLimits session_limits{.connection_payload = limits_.connection_payload,
                                     .server_payload = &payload_budget_,
                                     .handshake = std::chrono::seconds(limits_.handshake_seconds)};
  auto session = std::make_shared<Session>(std::move(socket), exports_, peer, session_limits);
  {
    std::lock_guard lk(mutex_);
    if (stopping_) return;  // dropped: the socket closes with the session
    if (sessions_.size() >= limits_.max_connections) {
      // Closed at once, so the client sees EOF rather than a hang.
      spdlog::warn("{}: refused: already {} connections (limits: max_connections)", peer,
                   sessions_.size());
      return;
    }
    sessions_.insert(session);
  }
  spdlog::info("{}: connected", session->peer());
  asio::co_spawn(loop, session->run(), [this, session](std::exception_ptr error, std::string why) {
    if (error) why = "internal error";
    spdlog::info("{}: disconnected: {}", session->peer(), why);
    session_ended(session);
  });
}

void Server::session_ended(const std::shared_ptr<Session>& session) {
  std::function<void()> idle;
  {
    std::lock_guard lk(mutex_);
    sessions_.erase(session);
    if (stopping_ && sessions_.empty() && quiescing_ == 0) idle = std::exchange(idle_, nullptr);
  }
  if (idle) idle();
}

void Server::quiesce_ended() {
  std::function<void()> idle;
  {
    std::lock_guard lk(mutex_);
    --quiescing_;
    if (sessions_.empty() && quiescing_ == 0) idle = std::exchange(idle_, nullptr);
  }
  if (idle) idle();
}

void Server::stop(std::function<void()> idle) {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lk(mutex_);
    if (stopping_) return;
    stopping_ = true;
    live.assign(sessions_.begin(), sessions_.end());
    if (!live.empty()) idle_ = std::move(idle);
  }
  for (auto& l : listeners_) l->close();
  spdlog::info("stopping: {} connection(s) finishing their requests", live.size());
  for (auto& s : live) s->stop();
  // Requests held by a suspended device must still be answered, and so must
  // those a target holds back (quiesce_for_shutdown()). The sessions are
  // idle once both are over.
  std::vector<std::shared_ptr<Device>> to_quiesce;
  for (auto& device : exports_.list())
    if (device->suspended()) {
      spdlog::info("device {}: suspended; letting its held requests through", device->name());
      device->release_held_io();
    } else if (!live.empty()) {
      to_quiesce.push_back(device);
    }
  {
    std::lock_guard lk(mutex_);
    quiescing_ += to_quiesce.size();
  }
  for (auto& device : to_quiesce)
    asio::co_spawn(loops_.accept, device->quiesce_for_shutdown(),
                   [this, device](std::exception_ptr) { quiesce_ended(); });
  if (live.empty()) idle();
}

}  // namespace dmnbd::nbd
