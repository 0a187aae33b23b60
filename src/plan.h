// The plan: how one call's ragged batch is cut into independent work.
//
// Each row's attended range is cut into chunks aligned to multiples of
// chunk_tokens (a whole number of tiles of block_size tokens). The cut depends
// only on that row's range and block_size, never on the thread count or the
// other rows, which is what makes results bitwise identical for every
// num_threads and batch-invariant. A work item is one chunk: it produces the
// partial softmax states of every query head, reading the chunk's key and
// value rows once, in address order. The merge combines a row's chunks in
// order.

#ifndef RAGGEDATTN_SRC_PLAN_H_
#define RAGGEDATTN_SRC_PLAN_H_

#include <cstdint>
#include <vector>

#include "src/problem.h"

namespace raggedattn {

// Tokens per tile when the caller does not choose: a tile's logits for a
// group of 8 heads stay within 4 KiB, well inside L1.
inline constexpr int64_t kDefaultBlockSize = 32;

// Target tokens per chunk. Large enough that the per-chunk merge is noise
// next to reading the chunk's KV rows, small enough that one long row still
// spreads over every core.
inline constexpr int64_t kChunkTokens = 512;

struct Chunk {
  int64_t batch = 0;
  int64_t begin = 0;  // first attended key position
  int64_t end = 0;    // one past the last
};

struct RowPlan {
  int64_t begin = 0;  // attended key range [begin, end); begin == end if none
  int64_t end = 0;
  int64_t first_chunk = 0;  // index into Plan::chunks
  int64_t num_chunks = 0;
};

struct Plan {
  int64_t block_size = 0;
  int64_t chunk_tokens = 0;
  std::vector<RowPlan> rows;  // [batch]
  std::vector<Chunk> chunks;  // in row order, then position order

  // One work item per chunk.
  int64_t NumWorkItems() const { return static_cast<int64_t>(chunks.size()); }
};

// Returns in [*begin, *end) the key positions attended by a query at
// position end - 1 of a row holding [start, end): that range cut by the
// window (a side of -1 is unbounded). When nothing is attended, *begin ==
// *end == start. Sides are clamped to seq_len first, so no side overflows.
void AttendedRange(int64_t start, int64_t end, int64_t seq_len,
                   int64_t window_left, int64_t window_right, int64_t* begin,
                   int64_t* end_out);

// Builds the plan of a validated problem.
Plan MakePlan(const Problem& problem);

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_PLAN_H_
