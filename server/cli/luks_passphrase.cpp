#include "luks_passphrase.hpp"

#include <termios.h>
#include <unistd.h>

#include <cstdio>

#include "luks/luks_volume.hpp"

namespace dmnbd::cli {

SecretBytes read_luks_passphrase(const std::string& key_file, const std::string& volume) {
  if (!key_file.empty()) return read_key_file(key_file, true);
  if (!isatty(STDIN_FILENO)) return read_passphrase_line(STDIN_FILENO);
  // Echo off while it is typed, restored however the read ends.
  termios saved{};
  const bool have_tty = tcgetattr(STDIN_FILENO, &saved) == 0;
  struct Restore {
    const termios& saved;
    bool active;
    ~Restore() {
      if (!active) return;
      tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
      std::fputs("\n", stderr);
    }
  } restore{saved, have_tty};
  if (have_tty) {
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
  }
  std::fprintf(stderr, "Enter passphrase for %s: ", volume.c_str());
  std::fflush(stderr);
  return read_passphrase_line(STDIN_FILENO);
}

}  // namespace dmnbd::cli
