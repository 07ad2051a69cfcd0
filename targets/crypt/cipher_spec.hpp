// dm-crypt's cipher argument, read the way crypt_ctr_cipher_old() and
// crypt_ctr_cipher_new() read it:
//   cipher[:keycount]-chainmode-ivmode[:ivopts]     aes-xts-plain64, aes:64-cbc-lmk,
//                                                    aes-cbc-essiv:sha256, cipher_null-ecb
//   capi:<crypto API name>-ivmode[:ivopts]           capi:xts(aes)-plain64
// Only the grammar lives here; which ciphers and IV modes exist is
// block_cipher.cpp's and iv_generator.cpp's business.
#pragma once
#include <optional>
#include <string>

namespace dmnbd::crypt {

struct CipherSpec {
  std::string chainmode;  // "cbc", "xts", "ecb", ... (the kernel's template name)
  std::string cipher;     // "aes", "cipher_null", ... (the block cipher)
  // The IV hash when the API name wraps the mode in essiv(), as both forms
  // do for `essiv:<hash>`.
  std::optional<std::string> essiv_hash;
  unsigned key_count = 1;  // tfms_count: sector s uses subkey s mod key_count
  std::optional<std::string> iv_mode;
  std::optional<std::string> iv_opts;
};

// Throws TargetError with the kernel's words for what its parser refuses
// ("Bad cipher specification", "Bad cipher key count specification", "IV
// mechanism required", "Digest algorithm missing for ESSIV mode", and
// "Error allocating crypto tfm" for an API name that is no mode(cipher)).
CipherSpec parse_cipher_spec(const std::string& text);

}  // namespace dmnbd::crypt
