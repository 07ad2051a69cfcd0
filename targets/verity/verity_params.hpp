// The verity target's table line, as verity_ctr() and verity_parse_opt_args()
// read it, every check in the kernel's order with its ti->error words, and as
// verity_status(STATUSTYPE_TABLE) prints it:
//   <version> <dev> <hash_dev> <data_block_size> <hash_block_size>
//   <#data blocks> <hash_start_block> <alg> <root digest> <salt|->
//   [<#opt_params> <opt>...]
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dmnbd/target.hpp"
#include "verity_geometry.hpp"
#include "verity_hash.hpp"

namespace dmnbd::verity {

// What a mismatch does (enum verity_mode).
enum class VerityMode { eio, logging, restart, panic };

struct VerityParams {
  std::string data_dev_name, hash_dev_name;
  std::shared_ptr<BlockDevice> data_dev, hash_dev;
  std::string alg_name;  // as the table wrote it
  std::unique_ptr<VerityHash> hash;
  std::vector<uint8_t> root_digest;
  std::vector<uint8_t> salt;  // empty for "-"
  VerityGeometry geometry;    // version, block sizes, counts and the tree

  VerityMode mode = VerityMode::eio;
  std::vector<uint8_t> zero_digest;  // ignore_zero_blocks: the digest of a zero data block
  bool check_at_most_once = false;
  bool try_verify_in_tasklet = false;
};

// Builds the parameters, opening both devices read-only. Throws TargetError.
VerityParams parse_verity_params(const TargetContext& ctx, TargetArgs args);

// The STATUSTYPE_TABLE line of `p`.
std::string verity_table_line(const VerityParams& p);

}  // namespace dmnbd::verity
