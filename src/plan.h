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

// Tokens per tile when the caller does not choose (DefaultBlockSize), on
// AMD's cores (`long_tiles`): up to kLongTileTokens for groups of up to 8
// query heads per KV head, and up to twice that for groups of 1 or 2 on
// targets with 16 floats per vector, whose arithmetic per byte is least;
// then halved while a tile's key and value rows exceed kMaxTileBytes. There
// longer tiles read faster from memory, measured with `raggedattn bench`
// from memory on an AMD EPYC (Zen 5), runs alternating:
// - 64 tokens against 32: on 2 threads Gemma-2-9B 79-81% of read bandwidth
//   -> 82-84% and Qwen2.5-7B 74-75% -> 75-78% with bf16, f32 Llama-3-8B
//   81-82% -> 86-87%; on 1 thread f32 Llama-3-8B 59% -> 67%; Llama-3-8B and
//   Mistral-7B with bf16 unchanged;
// - for groups of 1 and 2, 128 tokens against 64: 1 thread 63-65% -> 70-73%
//   (bf16, head_dim 128 and 256), 2 threads the same or better. For
//   Gemma-2-9B with f32 (16 KiB of rows per token) 128 tokens ran worse
//   than 64 (1 thread 69% against 75%, 2 threads 76-77% against 85-87%),
//   hence the cap on bytes. The AVX2 code (8 floats per vector, twice the
//   instructions per byte) ran Gemma-2-9B 3-4 points slower with 128 than
//   with 64 on 1 and 2 threads, and 64 as fast as 32.
// On an Intel Xeon (family 6, model 207) the same runs went the other way,
// so other CPUs keep kShortTileTokens throughout: bf16 at context 32768,
// batch 1 and 8, 32 tokens against 64 and 128, Gemma-2-9B 82-86% against
// 76-83% and 64-67% on 1 thread, Llama-3-8B 79-81% against 77-78% and
// 68-76%; f32 Gemma-2-9B 88-96% against 74-76%; 16 tokens no better than 32.
inline constexpr int64_t kLongTileTokens = 64;
inline constexpr int64_t kMaxTileBytes = int64_t{1} << 20;
// Tokens per tile when the caller does not choose, otherwise: larger groups
// (bound by their arithmetic: Falcon-7B 63-70% of FMA peak with 32 against
// 61-65% with 64) and windows shorter than a chunk (gpt-oss-20b's 128
// tokens, batch 1 on 2 threads: 23% of read bandwidth with 32 against 19%
// with 64; a call's first tile is read without having been requested, and
// presumably costs more the larger it is).
inline constexpr int64_t kShortTileTokens = 32;

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

// Returns the block size for a problem whose caller chose none, from its
// group size, window, the bytes of key and value rows per token (every KV
// head), the floats per vector of the kernel's SIMD target and whether the
// CPU takes long tiles (CpuIsAmd) alone (see kLongTileTokens).
int64_t DefaultBlockSize(int64_t group_size, int64_t window_left,
                         int64_t token_bytes, int lanes, bool long_tiles);

// Builds the plan of a validated problem.
Plan MakePlan(const Problem& problem);

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_PLAN_H_
