#include "control_client.hpp"

#include <array>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

#include "dmnbd/secret_bytes.hpp"

namespace dmnbd::cli {

nlohmann::json call(const std::filesystem::path& socket, const nlohmann::json& request) {
  namespace asio = boost::asio;
  asio::io_context ctx;
  asio::local::stream_protocol::socket sock(ctx);
  boost::system::error_code ec;
  sock.connect(socket.string(), ec);
  if (ec)
    throw Unreachable("cannot reach the dmnbd control socket " + socket.string() + ": " +
                      ec.message());
  std::string line = request.dump();
  const std::array<asio::const_buffer, 2> buffers{asio::buffer(line), asio::buffer("\n", 1)};
  asio::write(sock, buffers, ec);
  wipe_memory(line.data(), line.size());  // a table may hold a key
  std::string reply;
  if (!ec) asio::read_until(sock, asio::dynamic_buffer(reply), '\n', ec);
  if (ec && reply.find('\n') == std::string::npos)
    throw Unreachable("the control socket " + socket.string() + " closed: " + ec.message());
  auto response = nlohmann::json::parse(reply.substr(0, reply.find('\n')), nullptr, false);
  if (response.is_discarded() || !response.is_object())
    throw Unreachable("the control socket " + socket.string() + " sent a malformed reply");
  return response;
}

}  // namespace dmnbd::cli
