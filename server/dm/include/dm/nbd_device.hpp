// An NBD export on another server as a device a table can name:
// `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH` (libnbd's
// URIs). A mirror or raid1 with a local leg and such a leg is a volume
// replicated across two machines; linear and striped can spread a volume
// over several.
//
// I/O goes through libnbd's asynchronous API on one event loop of the server
// (run_on(), else the first that sends a bio; the others hand theirs over), so requests to
// the export are pipelined on one connection, with no thread per request.
// When the connection breaks (the server died, or a request got no answer
// within the request timeout), every request in flight fails with EIO and
// so do new ones, at once: a mirror marks the leg failed and goes on with
// the others. Meanwhile the device reconnects in the background, once a
// second until it is back, on a thread of its own (the connect blocks);
// requests go to the new connection once it is up.
#pragma once
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "dmnbd/asio.hpp"
#include "dmnbd/block_device.hpp"

namespace dmnbd {

class NbdDevice final : public BlockDevice, public std::enable_shared_from_this<NbdDevice> {
 public:
  struct Options {
    std::chrono::milliseconds connect_timeout{10000};
    std::chrono::milliseconds request_timeout{30000};
    std::chrono::milliseconds reconnect_interval{1000};
  };

  // True for a name that is an NBD URI rather than a path or a device name.
  static bool is_uri(const std::string& name);
  // Connects (blocking, up to the connect timeout); throws TargetError with
  // the reason (the server's or libnbd's words) when the export cannot be used.
  static std::shared_ptr<NbdDevice> open(const std::string& uri, bool read_only);
  static std::shared_ptr<NbdDevice> open(const std::string& uri, bool read_only, Options options);
  ~NbdDevice() override;
  // The loop the connection runs on from now on, watched even while idle,
  // so a lost connection is noticed (and remade) before the next request.
  // Without it: the loop of the first I/O. Call it before any I/O.
  void run_on(asio::any_io_executor home);

  std::string name() const override { return uri_; }
  uint64_t sectors() const override { return size_bytes_ >> kSectorShift; }
  Task<Status> submit(Bio bio) override;
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override;

  bool connected() const { return connected_.load(); }
  // Connections made since the device was opened (1 for the first).
  uint64_t connections() const { return connections_.load(); }

 private:
  struct Connection;
  struct Request;
  NbdDevice(std::string uri, bool read_only, Options options);

  // On the home loop from here on.
  Task<Status> run(Bio bio);
  Task<Status> run_piece(Connection& c, Bio bio);
  // On the home loop: the socket, and the pump that reads it.
  void attach(const std::shared_ptr<Connection>& c);
  Task<void> read_pump(std::shared_ptr<Connection> c);
  Task<void> write_pump(std::shared_ptr<Connection> c);
  Task<void> watch(std::shared_ptr<Connection> c);
  // The connection is broken: fail what is in flight, let it go.
  void drop(const std::shared_ptr<Connection>& c, const char* why);
  void maybe_reconnect();

  const std::string uri_;
  const bool read_only_;
  const Options options_;
  uint64_t size_bytes_ = 0;
  bool can_flush_ = false, can_fua_ = false, can_trim_ = false, can_zero_ = false,
       can_fast_zero_ = false;
  uint64_t max_request_bytes_ = 32u << 20;

  std::mutex mutex_;  // everything below
  std::optional<asio::any_io_executor> home_;
  std::shared_ptr<Connection> connection_;  // null while disconnected
  std::thread reconnector_;
  bool reconnecting_ = false;
  std::chrono::steady_clock::time_point last_attempt_{};
  std::atomic<bool> connected_ = false;
  std::atomic<uint64_t> connections_ = 0;
};

}  // namespace dmnbd
