// `dmnbd thin check`: the project's own check of a thin pool's metadata
// (targets/thin/metadata_checker.hpp) on a metadata file or block device,
// without a server: for a pool that is suspended or not running.
#pragma once
#include <ostream>
#include <string>

namespace dmnbd::cli {

// Prints each inconsistency, then a summary; returns 0 if there is none,
// 1 if there are, 2 if the metadata cannot be opened.
int thin_check(const std::string& metadata, std::ostream& out, std::ostream& err);

}  // namespace dmnbd::cli
