#include "control_client.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

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
  std::string line = request.dump() + "\n";
  asio::write(sock, asio::buffer(line), ec);
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
