#include "crypt_key.hpp"

#include <keyutils.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "dmnbd/status.hpp"
#include "dmnbd/target.hpp"

namespace dmnbd::crypt {
namespace {

[[noreturn]] void refuse(const std::string& why) {
  throw TargetError("Error decoding and setting key (" + why + ")");
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

SecretBytes decode_hex(const std::string& text, size_t size) {
  SecretBytes key(size);
  for (size_t i = 0; i < size; ++i) {
    const int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
    if (hi < 0 || lo < 0) refuse("the key is not hexadecimal");
    key.bytes()[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return key;
}

// The payload of a keyring key, wiped from libkeyutils' buffer once copied.
SecretBytes read_keyring(const std::string& ref, size_t size) {
  for (char c : ref)
    if (std::isspace(static_cast<unsigned char>(c)))
      refuse("whitespace chars not allowed in key string");
  const size_t colon = ref.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == ref.size())
    refuse("a keyring key is :<size>:<type>:<description>");
  const std::string type = ref.substr(0, colon), description = ref.substr(colon + 1);
  if (type == "logon" || type == "encrypted" || type == "trusted")
    refuse("the kernel gives no process the payload of a " + type + " key; load it as a user key");
  if (type != "user") refuse("unknown key type " + type);
  // The process's keyrings first (as the kernel's request_key searches), then
  // the user keyring, where `keyctl add user NAME DATA @u` puts one.
  key_serial_t id = request_key(type.c_str(), description.c_str(), nullptr, 0);
  if (id < 0) id = keyctl_search(KEY_SPEC_USER_KEYRING, type.c_str(), description.c_str(), 0);
  if (id < 0) refuse("no user key " + description + " in the keyring: " + std::strerror(errno));
  void* payload = nullptr;
  const long length = keyctl_read_alloc(id, &payload);
  if (length < 0) refuse("cannot read key " + description + ": " + std::strerror(errno));
  SecretBytes key(size);
  const bool fits = static_cast<size_t>(length) == size;
  if (fits) std::memcpy(key.bytes().data(), payload, size);
  wipe_memory(payload, static_cast<size_t>(length));
  std::free(payload);
  if (!fits)
    refuse("key " + description + " holds " + std::to_string(length) + " bytes, not " +
           std::to_string(size));
  return key;
}

}  // namespace

KeyArgument parse_key_size(const std::string& text) {
  KeyArgument arg;
  if (text.empty() || text[0] != ':') {
    arg.size = text.size() >> 1;
    return arg;
  }
  // sscanf(":%u%c") with the character a ':'.
  const size_t colon = text.find(':', 1);
  uint32_t size = 0;
  if (colon == std::string::npos || !scan_u32(std::string_view(text).substr(1, colon - 1), size))
    throw TargetError("Cannot parse key size");
  arg.size = size;
  arg.keyring = text.substr(colon + 1);
  return arg;
}

SecretBytes load_key(const std::string& text, const KeyArgument& arg) {
  if (!arg.keyring.empty()) return read_keyring(arg.keyring, arg.size);
  // A hyphen, which gives a size of zero, is no key; any other short text is wrong.
  if (!arg.size && text != "-") refuse("the key is not hexadecimal");
  return decode_hex(text, arg.size);
}

}  // namespace dmnbd::crypt
