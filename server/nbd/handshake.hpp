// The NBD handshake: the greeting, then option haggling until the client
// picks an export (GO or EXPORT_NAME), aborts, or breaks the rules. What was
// agreed is all the transmission phase needs to know of it.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dm/device.hpp"
#include "dm/device_manager.hpp"
#include "dmnbd/asio.hpp"
#include "protocol.hpp"
#include "request_reader.hpp"

namespace dmnbd::nbd {

// What the handshake agreed on.
struct Negotiated {
  std::shared_ptr<Device> device;  // the export
  bool structured_replies = false;
  bool base_allocation = false;  // the base:allocation meta context is selected
};

class Handshake {
 public:
  Handshake(Socket& socket, const DeviceManager& exports, const std::string& peer);

  // Runs the handshake on the socket. Returns what was agreed once the client
  // enters transmission, or nothing (with `why` set) when it ends otherwise.
  // Socket errors are thrown as boost::system::system_error.
  Task<std::optional<Negotiated>> run(std::string& why);

 private:
  Task<bool> handle_option(uint32_t option, std::vector<uint8_t>& payload, std::string& why,
                           bool& go);
  Task<void> send_option_reply(uint32_t option, uint32_t type, std::string_view payload = {});
  Task<void> send_info(uint32_t option, const InfoRequest& req, const Device& device);
  Task<void> handle_meta_context(uint32_t option, std::span<const uint8_t> payload);
  uint16_t transmission_flags(const Device& device) const;
  Task<void> discard_payload(uint64_t length);

  Socket& socket_;
  const DeviceManager& exports_;
  const std::string& peer_;
  bool no_zeroes_ = false;
  std::string meta_context_export_;  // the export base:allocation was selected for
  Negotiated n_;
};

}  // namespace dmnbd::nbd
