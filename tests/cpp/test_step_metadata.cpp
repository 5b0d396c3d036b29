// The flat step arrays: positions, slots, tables, query starts, logits rows.
#include "check.h"
#include "inflight/step_metadata.h"

using namespace inflight;

TEST(layout_of_a_mixed_step) {
  std::vector<Token> dec = {5, 6, 7, 8, 9}, pre = {1, 2, 3, 4, 5, 6, 7};
  std::vector<BlockId> t_dec = {3, 8}, t_pre = {1, 2};
  std::vector<StepEntry> es(2);
  es[0] = {dec, 4, 1, 4, t_dec, true, false};  // a decode at position 4 (block 8, offset 0)
  es[1] = {pre, 0, 7, 7, t_pre, true, true};   // a whole prompt that wants context logits
  std::vector<int64_t> ids(16), pos(16), slots(16), logits(16);
  std::vector<int32_t> qsl(3), lens(2), samples(2), tables(4);
  StepBuffers out{ids, pos, slots, logits, qsl, lens, samples, tables};
  StepLayout lay = build_step_metadata(es, 4, out);
  CHECK_EQ(lay.num_tokens, int64_t{8});
  CHECK_EQ(lay.num_decodes, 1);
  CHECK_EQ(lay.table_width, 2);
  CHECK_EQ(std::vector<int64_t>(ids.begin(), ids.begin() + 8), (std::vector<int64_t>{9, 1, 2, 3, 4, 5, 6, 7}));
  CHECK_EQ(std::vector<int64_t>(pos.begin(), pos.begin() + 8), (std::vector<int64_t>{4, 0, 1, 2, 3, 4, 5, 6}));
  CHECK_EQ(std::vector<int64_t>(slots.begin(), slots.begin() + 8),
           (std::vector<int64_t>{32, 4, 5, 6, 7, 8, 9, 10}));
  CHECK_EQ(qsl, (std::vector<int32_t>{0, 1, 8}));
  CHECK_EQ(lens, (std::vector<int32_t>{5, 7}));
  CHECK_EQ(tables, (std::vector<int32_t>{3, 8, 1, 2}));
  // rows: the decode's token, then the prompt's 7 context rows; its last one samples too
  CHECK_EQ(lay.num_logits, 8);
  CHECK_EQ(std::vector<int64_t>(logits.begin(), logits.begin() + 8), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  CHECK_EQ(samples, (std::vector<int32_t>{0, 7}));
  CHECK_EQ(lay.context_rows.size(), size_t{1});
  CHECK(lay.context_rows[0].entry == 1 && lay.context_rows[0].begin == 1 && lay.context_rows[0].end == 8);
  CHECK_EQ(lay.max_query_len, int64_t{7});
  CHECK_EQ(lay.max_seq_len, int64_t{7});
}

TEST(checks_its_inputs_and_buffers) {
  std::vector<Token> toks = {1, 2, 3, 4, 5};
  std::vector<BlockId> one = {0};
  std::vector<StepEntry> es = {{toks, 0, 5, 5, one, true, false}};
  std::vector<int64_t> big(8), small(2);
  std::vector<int32_t> q(2), l(1), s(1), t(2);
  StepBuffers ok{big, big, big, big, q, l, s, t};
  CHECK_THROWS(build_step_metadata(es, 4, ok), IntegrityError);  // table too short
  std::vector<BlockId> two = {0, 1};
  es[0].table = two;
  StepBuffers tiny{small, small, small, small, q, l, s, t};
  CHECK(!step_needs(es).fits(tiny));
  CHECK_THROWS(build_step_metadata(es, 4, tiny), std::length_error);
  CHECK(step_needs(es).fits(ok));
  es[0].num_new = 6;  // past the request's tokens
  CHECK_THROWS(build_step_metadata(es, 4, ok), IntegrityError);
}

TEST_MAIN()
