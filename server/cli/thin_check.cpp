#include "thin_check.hpp"

#include "../../targets/thin/metadata_checker.hpp"
#include "dm/file_device.hpp"
#include "dm/run_blocking.hpp"

namespace dmnbd::cli {

int thin_check(const std::string& metadata, std::ostream& out, std::ostream& err) {
  std::shared_ptr<BlockDevice> dev;
  try {
    dev = FileDevice::open(metadata, true);
  } catch (const std::exception& e) {
    err << "dmnbd thin check: " << metadata << ": " << e.what() << "\n";
    return 2;
  }
  const thin::MetadataCheck check = run_blocking(thin::check_metadata(*dev));
  for (const std::string& e : check.errors) out << metadata << ": " << e << "\n";
  out << "transaction id " << check.transaction_id << ", " << check.devices << " devices, "
      << check.mappings << " mappings; metadata blocks " << check.metadata_used << "/"
      << check.metadata_blocks << ", data blocks " << check.data_used << "/" << check.data_blocks
      << (check.held_root ? ", held root " + std::to_string(check.held_root) : "")
      << (check.needs_check ? ", needs_check" : "") << "\n";
  if (!check.ok()) {
    out << check.errors.size() << " inconsistencies\n";
    return 1;
  }
  out << "clean\n";
  return 0;
}

}  // namespace dmnbd::cli
