// The flat per-step arrays the model runner feeds the model and the attention backend,
// written into caller-owned buffers (pinned host memory on GPU) so a step allocates nothing.
//
// Layout of a step: the new tokens of every scheduled request concatenated in scheduled
// order (decodes first). For request b with new tokens at positions [start, start + n):
//   input_ids[t], positions[t], slot_mapping[t]   t in [qsl[b], qsl[b + 1])
//   query_start_loc[b + 1] = qsl[b] + n, seq_lens[b] = start + n
//   block_tables[b * W + j]: its j-th block, zero padded to W = the longest table
//   slot = block_tables[b, pos / block_size] * block_size + pos % block_size
//   logits_indices: token rows whose logits are computed: every prompt row of a chunk that
//   asked for context logits, then the last row of each request that samples
//   sample_rows[k]: the logits row of the k-th sampling request
#pragma once

#include <string>
#include <vector>

#include "inflight/common.h"

namespace inflight {

struct StepEntry {
  Span<const Token> tokens;  // all of the request's tokens
  int64_t start = 0;
  int32_t num_new = 0;
  int32_t num_prompt = 0;
  Span<const BlockId> table;
  bool samples = false;
  bool context_logits = false;
};

struct StepBuffers {
  Span<int64_t> input_ids, positions, slot_mapping, logits_indices;  // capacity: tokens
  Span<int32_t> query_start_loc;                                     // capacity: requests + 1
  Span<int32_t> seq_lens, sample_rows;                               // capacity: requests
  Span<int32_t> block_tables;                                        // capacity: requests x width
};

struct StepNeeds {
  int64_t tokens = 0;
  int64_t reqs = 0;
  int64_t table_width = 0;
  bool fits(const StepBuffers& b) const;
};

struct ContextRows {
  int32_t entry;  // index into the entries
  int32_t begin;  // logits rows [begin, end) hold its prompt positions of this chunk
  int32_t end;
};

struct StepLayout {
  int64_t num_tokens = 0;
  int32_t num_reqs = 0;
  int32_t num_logits = 0;
  int32_t num_samples = 0;
  int32_t table_width = 0;
  int32_t num_decodes = 0;  // entries with exactly one new token
  int64_t max_query_len = 0;
  int64_t max_seq_len = 0;
  std::vector<ContextRows> context_rows;
};

StepNeeds step_needs(const std::vector<StepEntry>& entries);
// Throws std::length_error when a buffer is too small (check step_needs first) and
// IntegrityError when a table is too short for the positions it must map.
StepLayout build_step_metadata(const std::vector<StepEntry>& entries, int32_t block_size,
                               const StepBuffers& out);

}  // namespace inflight
