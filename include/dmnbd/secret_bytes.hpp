// Memory for key material: locked in RAM so it is never swapped out, left out
// of core dumps, and wiped before it is given back. Move-only.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>

namespace dmnbd {

class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t size);  // zeroed
  ~SecretBytes();
  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  std::span<uint8_t> bytes() { return {data_, size_}; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  // Zeroes the bytes in place; the size stays.
  void wipe();

 private:
  void release();
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

// explicit_bzero(): zeroes memory the compiler may not optimise the store away
// from, for copies of secrets outside SecretBytes (a key's hex text).
void wipe_memory(void* data, size_t size);

// Zeroes every string in a JSON tree (nlohmann::json) in place: a control
// request's table or message may hold a key.
template <typename Json>
void wipe_strings(Json& value) {
  if (value.is_string()) {
    auto& text = value.template get_ref<typename Json::string_t&>();
    wipe_memory(text.data(), text.size());
  } else if (value.is_structured()) {
    for (auto& item : value) wipe_strings(item);
  }
}

}  // namespace dmnbd
