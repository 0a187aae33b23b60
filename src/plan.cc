#include "src/plan.h"

#include <algorithm>

namespace raggedattn {

void AttendedRange(int64_t start, int64_t end, int64_t seq_len,
                   int64_t window_left, int64_t window_right, int64_t* begin,
                   int64_t* end_out) {
  int64_t lo = start;
  int64_t hi = end;
  const int64_t position = end - 1;  // the query's own position
  if (window_left >= 0) {
    lo = std::max(lo, position - std::min(window_left, seq_len));
  }
  if (window_right >= 0) {
    hi = std::min(hi, position + std::min(window_right, seq_len) + 1);
  }
  if (hi <= lo) lo = hi = start;
  *begin = lo;
  *end_out = hi;
}

int64_t DefaultBlockSize(int64_t group_size, int64_t window_left,
                         int64_t token_bytes, int lanes, bool long_tiles) {
  if (!long_tiles || group_size > 8) return kShortTileTokens;
  if (window_left >= 0 && window_left < kChunkTokens) return kShortTileTokens;
  int64_t tokens =
      group_size <= 2 && lanes >= 16 ? 2 * kLongTileTokens : kLongTileTokens;
  while (tokens > kShortTileTokens && token_bytes > kMaxTileBytes / tokens) {
    tokens /= 2;
  }
  return tokens;
}

Plan MakePlan(const Problem& problem) {
  Plan plan;
  plan.block_size = problem.block_size;
  // A whole number of tiles, so that no tile straddles two chunks.
  plan.chunk_tokens = problem.block_size *
                      std::max<int64_t>(1, kChunkTokens / problem.block_size);
  plan.rows.resize(problem.batch);
  for (int64_t b = 0; b < problem.batch; ++b) {
    RowPlan& row = plan.rows[b];
    AttendedRange(problem.Start(b), problem.End(b), problem.seq_len,
                  problem.window_left, problem.window_right, &row.begin,
                  &row.end);
    row.first_chunk = static_cast<int64_t>(plan.chunks.size());
    for (int64_t begin = row.begin; begin < row.end;) {
      const int64_t boundary =
          (begin / plan.chunk_tokens + 1) * plan.chunk_tokens;
      const int64_t end = std::min(row.end, boundary);
      plan.chunks.push_back(Chunk{b, begin, end});
      begin = end;
    }
    row.num_chunks = static_cast<int64_t>(plan.chunks.size()) - row.first_chunk;
  }
  return plan;
}

}  // namespace raggedattn
