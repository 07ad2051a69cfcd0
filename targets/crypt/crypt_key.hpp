// The key argument of a crypt table (and of `key set`), read as the kernel's
// get_key_size() and crypt_set_key() read it:
//   <hex>                           the whole key, two hex digits a byte
//   -                               no key (a zero-length key: cipher_null)
//   :<size>:<type>:<description>    a key of <size> bytes in the kernel keyring
// A keyring key is read with libkeyutils: only `user` keys give their payload
// to a process (logon, encrypted and trusted keys are the kernel's alone).
#pragma once
#include <string>

#include "dmnbd/secret_bytes.hpp"

namespace dmnbd::crypt {

struct KeyArgument {
  size_t size = 0;      // bytes
  std::string keyring;  // "<type>:<description>" for a keyring key, else empty
};

// get_key_size(): throws TargetError("Cannot parse key size").
KeyArgument parse_key_size(const std::string& text);

// The key itself; throws TargetError("Error decoding and setting key (why)").
// The reason never holds key bytes.
SecretBytes load_key(const std::string& text, const KeyArgument& arg);

}  // namespace dmnbd::crypt
