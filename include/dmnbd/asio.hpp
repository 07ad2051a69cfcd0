// One place that pulls in the parts of Boost.Asio the project uses.
#pragma once
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace dmnbd {
namespace asio = boost::asio;
template <typename T>
using Task = asio::awaitable<T>;
}  // namespace dmnbd
