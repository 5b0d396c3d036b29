// KVCacheManager as Python sees it: the string-keyed API of the pure-Python manager it
// replaces, plus read-only snapshots (ref_cnt, free_queue, block_hash, cached, req_blocks)
// that tests read. Snapshots copy: they are for tests and metrics, not the step path.
#include "inflight/kv_cache_manager.h"
#include "inflight/testing.h"

#include <string>

#include "python/bindings.h"

namespace inflight::py_bind {
namespace {

py::bytes digest_bytes(const Digest& d) { return py::bytes(reinterpret_cast<const char*>(d.data()), d.size()); }

std::vector<BlockId> to_blocks(const py::object& seq) {
  if (seq.is_none()) return {};
  return seq.cast<std::vector<BlockId>>();
}

}  // namespace

void bind_kv(py::module_& m) {
  py::class_<KVCacheManager>(m, "KVCacheManager", "Ref-counted KV block pool with prefix reuse.")
      .def(py::init<int32_t, int32_t, bool>(), py::arg("num_blocks"), py::arg("block_size"),
           py::arg("enable_prefix_caching") = false)
      .def_property_readonly("num_blocks", &KVCacheManager::num_blocks)
      .def_property_readonly("block_size", &KVCacheManager::block_size)
      .def_property_readonly("enable_prefix_caching", &KVCacheManager::prefix_caching)
      .def_property_readonly("num_free_blocks", &KVCacheManager::num_free_blocks,
                             "free blocks, cached-but-unreferenced ones included")
      .def_property_readonly(
          "ref_cnt",
          [](const KVCacheManager& kv) {
            py::list out(kv.num_blocks());
            for (BlockId b = 0; b < kv.num_blocks(); ++b) {
              PyList_SET_ITEM(out.ptr(), b, PyLong_FromLong(kv.pool().ref_count(b)));
            }
            return out;
          },
          "ref count of every block (a snapshot)")
      .def_property_readonly(
          "free_queue", [](const KVCacheManager& kv) { return kv.pool().free_queue(); },
          "free block ids in eviction order, front first (a snapshot)")
      .def_property_readonly(
          "block_hash",
          [](const KVCacheManager& kv) {
            py::list out;
            for (BlockId b = 0; b < kv.num_blocks(); ++b) {
              const Digest* h = kv.pool().hash(b);
              out.append(h ? py::object(digest_bytes(*h)) : py::object(py::none()));
            }
            return out;
          },
          "each block's cache key or None (a snapshot)")
      .def_property_readonly(
          "cached",
          [](const KVCacheManager& kv) {
            py::dict out;
            for (const auto& kb : kv.pool().cached_blocks()) out[digest_bytes(kb.first)] = kb.second;
            return out;
          },
          "cache key -> block id (a snapshot)")
      .def_property_readonly(
          "req_blocks",
          [](const KVCacheManager& kv) {
            py::dict out;
            for (const auto& t : kv.tables()) out[py::str(t.first)] = to_list(Span<const BlockId>(t.second));
            return out;
          },
          "request id -> block table, for requests that hold one (a snapshot)")
      .def(
          "block_table",
          [](const KVCacheManager& kv, const std::string& id) {
            const SeqBlocks* s = kv.find(id);  // no intermediate copy: straight into a list
            return s == nullptr ? py::list() : to_list(Span<const BlockId>(s->table));
          },
          py::arg("req_id"), "the request's block ids (a copy; empty for an unknown request)")
      .def("blocks_needed", &KVCacheManager::blocks_needed, py::arg("num_tokens"))
      .def("request_block_counts", &KVCacheManager::request_block_counts, py::arg("req_id"),
           "(reused, newly allocated, total) blocks of a request: the Triton kv-reuse outputs")
      .def(
          "prefix_hit",
          [](KVCacheManager& kv, const std::string& id, const py::object& tokens, const std::string& extra) {
            return kv.prefix_hit(id, to_tokens(tokens), extra);
          },
          py::arg("req_id"), py::arg("token_ids"), py::arg("extra") = "",
          "Cached blocks of the longest cached prefix; at least one token is left to compute.")
      .def(
          "cache_full_blocks",
          [](KVCacheManager& kv, const std::string& id, const py::object& tokens, int64_t num_computed,
             const std::string& extra) { kv.cache_full_blocks(id, to_tokens(tokens), num_computed, extra); },
          py::arg("req_id"), py::arg("token_ids"), py::arg("num_computed"), py::arg("extra") = "")
      .def(
          "allocate",
          [](KVCacheManager& kv, const std::string& id, int64_t num_tokens, const py::object& prefix) {
            return kv.allocate(id, num_tokens, to_blocks(prefix));
          },
          py::arg("req_id"), py::arg("num_tokens"), py::arg("prefix_blocks") = py::none(),
          "Grow the request's table to num_tokens tokens; False, changing nothing, if the pool is short.")
      .def("free", py::overload_cast<const std::string&>(&KVCacheManager::free), py::arg("req_id"))
      .def("forget", &KVCacheManager::forget, py::arg("req_id"))
      .def("reset_prefix_cache", &KVCacheManager::reset_prefix_cache)
      .def("check_integrity", &KVCacheManager::check_integrity,
           "Raise IntegrityError (an AssertionError) on any inconsistency.")
      .def("_counters", [](const KVCacheManager& kv) {
        return py::make_tuple(kv.pool().num_cached(), kv.counters().reused_blocks_total,
                              kv.counters().lookup_blocks_total);
      });

  m.def(
      "_testing_corrupt",
      [](KVCacheManager& kv, const std::string& what, BlockId block, const std::string& id) {
        using testing::Corruption;
        static const std::pair<const char*, Corruption> kinds[] = {
            {"ref_count", Corruption::kRefCount},          {"queue_insert", Corruption::kQueueInsert},
            {"queue_unlink", Corruption::kQueueUnlink},    {"table_duplicate", Corruption::kTableDuplicate},
            {"stale_hash", Corruption::kStaleHash}};
        for (const auto& k : kinds) {
          if (what == k.first) return testing::corrupt(kv, k.second, block, id);
        }
        throw py::value_error("unknown corruption " + what);
      },
      py::arg("kv"), py::arg("what"), py::arg("block"), py::arg("req_id") = "",
      "Tests only: break the pool's state on purpose so check_integrity() can be seen to notice.");
}

}  // namespace inflight::py_bind
