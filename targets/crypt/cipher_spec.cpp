#include "cipher_spec.hpp"

#include <string_view>

#include "dmnbd/status.hpp"
#include "dmnbd/target.hpp"

namespace dmnbd::crypt {
namespace {

// strsep(&rest, delims): the text up to the first delimiter; rest becomes
// what follows it, or nothing when there was no delimiter. Nothing in,
// nothing out.
std::optional<std::string> strsep(std::optional<std::string>& rest, char delim) {
  if (!rest) return std::nullopt;
  std::string token;
  const size_t at = rest->find(delim);
  if (at == std::string::npos) {
    token = std::move(*rest);
    rest.reset();
  } else {
    token = rest->substr(0, at);
    rest = rest->substr(at + 1);
  }
  return token;
}

// strrchr-and-cut: splits `text` at the last `delim`; what follows, if any.
std::optional<std::string> cut_last(std::string& text, char delim) {
  const size_t at = text.rfind(delim);
  if (at == std::string::npos) return std::nullopt;
  std::string tail = text.substr(at + 1);
  text.resize(at);
  return tail;
}

bool is_power_of_2(unsigned v) {
  return v && !(v & (v - 1));
}

// "mode(cipher)" -> mode, cipher; the crypto API would fail to find anything
// else, which the kernel reports as a failed allocation.
void split_api_name(std::string_view api, CipherSpec& spec) {
  const size_t open = api.find('(');
  if (open == std::string_view::npos || open == 0 || api.back() != ')' ||
      api.find_first_of("(),", open + 1) != api.size() - 1)
    throw TargetError("Error allocating crypto tfm");
  spec.chainmode = api.substr(0, open);
  spec.cipher = api.substr(open + 1, api.size() - open - 2);
}

void take_essiv_hash(CipherSpec& spec) {
  if (spec.iv_mode != "essiv") return;
  if (!spec.iv_opts) throw TargetError("Digest algorithm missing for ESSIV mode");
  spec.essiv_hash = spec.iv_opts;
}

CipherSpec parse_capi(const std::string& text) {
  CipherSpec spec;
  std::string api = text.substr(std::string_view("capi:").size());
  // IV options may hold a '-' of their own (a hash name), so ':' goes first.
  spec.iv_opts = cut_last(api, ':');
  spec.iv_mode = cut_last(api, '-');
  if (spec.iv_mode == "lmk") spec.key_count = 64;
  take_essiv_hash(spec);
  // The API name may spell ESSIV itself: essiv(cbc(aes),sha256).
  if (!spec.essiv_hash && api.starts_with("essiv(") && api.ends_with(")")) {
    api.pop_back();
    spec.essiv_hash = cut_last(api, ',');
    api.erase(0, std::string_view("essiv(").size());
  }
  split_api_name(api, spec);
  return spec;
}

CipherSpec parse_legacy(const std::string& text) {
  if (text.find('(') != std::string::npos) throw TargetError("Bad cipher specification");
  CipherSpec spec;
  std::optional<std::string> rest = text;
  std::optional<std::string> keycount = strsep(rest, '-');
  spec.cipher = *strsep(keycount, ':');
  if (keycount) {
    uint32_t count = 0;
    if (!scan_u32(*keycount, count) || !is_power_of_2(count))
      throw TargetError("Bad cipher key count specification");
    spec.key_count = count;
  }
  std::optional<std::string> chainmode = strsep(rest, '-');
  spec.iv_mode = strsep(rest, ':');
  spec.iv_opts = rest;
  // The original dm-crypt format: a bare cipher name (or "cipher-plain")
  // means cbc-plain.
  if (!chainmode || (*chainmode == "plain" && !spec.iv_mode)) {
    chainmode = "cbc";
    spec.iv_mode = "plain";
  }
  if (*chainmode != "ecb" && !spec.iv_mode) throw TargetError("IV mechanism required");
  spec.chainmode = *chainmode;
  take_essiv_hash(spec);
  return spec;
}

}  // namespace

CipherSpec parse_cipher_spec(const std::string& text) {
  return text.starts_with("capi:") ? parse_capi(text) : parse_legacy(text);
}

}  // namespace dmnbd::crypt
