#include "inflight/step_metadata.h"

#include <algorithm>

namespace inflight {

StepNeeds step_needs(const std::vector<StepEntry>& entries) {
  StepNeeds n;
  n.reqs = static_cast<int64_t>(entries.size());
  for (const auto& e : entries) {
    n.tokens += e.num_new;
    n.table_width = std::max<int64_t>(n.table_width, static_cast<int64_t>(e.table.size()));
  }
  return n;
}

bool StepNeeds::fits(const StepBuffers& b) const {
  auto t = static_cast<size_t>(tokens), r = static_cast<size_t>(reqs);
  return b.input_ids.size() >= t && b.positions.size() >= t && b.slot_mapping.size() >= t &&
         b.logits_indices.size() >= t && b.query_start_loc.size() >= r + 1 && b.seq_lens.size() >= r &&
         b.sample_rows.size() >= r && b.block_tables.size() >= r * static_cast<size_t>(table_width);
}

StepLayout build_step_metadata(const std::vector<StepEntry>& entries, int32_t block_size,
                               const StepBuffers& out) {
  StepNeeds needs = step_needs(entries);
  if (!needs.fits(out)) throw std::length_error("step metadata buffers are too small for this step");
  StepLayout lay;
  lay.num_reqs = static_cast<int32_t>(entries.size());
  lay.table_width = static_cast<int32_t>(needs.table_width);
  const int64_t w = needs.table_width;
  int64_t t = 0;        // next token row
  int32_t logits = 0;   // next logits row
  out.query_start_loc[0] = 0;
  for (size_t b = 0; b < entries.size(); ++b) {
    const StepEntry& e = entries[b];
    const int64_t end = e.start + e.num_new;
    check(end <= static_cast<int64_t>(e.tokens.size()), "scheduled past the request's tokens");
    check(blocks_for(end, block_size) <= static_cast<int64_t>(e.table.size()),
          "block table too short for the scheduled positions");
    const int64_t row0 = t;
    for (int64_t p = e.start; p < end; ++p, ++t) {
      out.input_ids[t] = e.tokens[p];
      out.positions[t] = p;
      out.slot_mapping[t] = static_cast<int64_t>(e.table[p / block_size]) * block_size + p % block_size;
    }
    out.query_start_loc[b + 1] = static_cast<int32_t>(t);
    out.seq_lens[b] = static_cast<int32_t>(end);
    int32_t* row = out.block_tables.data() + static_cast<int64_t>(b) * w;
    std::copy(e.table.begin(), e.table.end(), row);
    std::fill(row + e.table.size(), row + w, 0);
    if (e.context_logits && e.start < e.num_prompt) {
      // context logits: every prompt position computed in this chunk
      int64_t n_ctx = std::min<int64_t>(end, e.num_prompt) - e.start;
      lay.context_rows.push_back({static_cast<int32_t>(b), logits, static_cast<int32_t>(logits + n_ctx)});
      for (int64_t i = 0; i < n_ctx; ++i) out.logits_indices[logits++] = row0 + i;
    }
    if (e.samples) {
      // the last row may be there already as a context-logits row: computed once
      if (logits == 0 || out.logits_indices[logits - 1] != t - 1) out.logits_indices[logits++] = t - 1;
      out.sample_rows[lay.num_samples++] = logits - 1;
    }
    lay.num_decodes += e.num_new == 1 ? 1 : 0;
    lay.max_query_len = std::max<int64_t>(lay.max_query_len, e.num_new);
    lay.max_seq_len = std::max(lay.max_seq_len, end);
  }
  lay.num_tokens = t;
  lay.num_logits = logits;
  return lay;
}

}  // namespace inflight
