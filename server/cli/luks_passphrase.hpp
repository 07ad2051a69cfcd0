// The passphrase of `dmnbd luks open`, read the way cryptsetup open reads it.
#pragma once
#include <string>

#include "dmnbd/secret_bytes.hpp"

namespace dmnbd::cli {

// From `key_file` if one is named (the whole file; "-" all of stdin), else
// from the terminal without echo after a prompt naming `volume`, else (stdin
// is not a terminal) one line of stdin. Throws LuksError.
SecretBytes read_luks_passphrase(const std::string& key_file, const std::string& volume);

}  // namespace dmnbd::cli
