#include "src/threading.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <atomic>

namespace raggedattn {

int DefaultThreadCount() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1, CPU_COUNT(&set));
  }
  return std::max(1, omp_get_num_procs());
}

void ParallelFor(int num_threads, int64_t num_items,
                 const std::function<void(int64_t, int)>& body) {
  const int threads =
      static_cast<int>(std::min<int64_t>(num_threads, num_items));
  // Waking a team costs microseconds; a single item or thread runs inline.
  if (threads <= 1) {
    for (int64_t item = 0; item < num_items; ++item) body(item, 0);
    return;
  }
  // Dynamic scheduling balances rows of very different lengths; results do
  // not depend on which thread runs an item.
#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < num_items; ++item) body(item, thread);
  }
}

void ParallelForWithNext(
    int num_threads, int64_t num_items,
    const std::function<void(int64_t, int64_t, int)>& body) {
  const int threads =
      static_cast<int>(std::min<int64_t>(num_threads, num_items));
  if (threads <= 1) {
    for (int64_t item = 0; item < num_items; ++item) {
      body(item, item + 1 < num_items ? item + 1 : -1, 0);
    }
    return;
  }
  // A shared counter hands out items in order, like schedule(dynamic, 1),
  // one claim ahead of the item running.
  std::atomic<int64_t> next_free{0};
  const auto claim = [&]() -> int64_t {
    const int64_t item = next_free.fetch_add(1, std::memory_order_relaxed);
    return item < num_items ? item : -1;
  };
#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num();
    int64_t item = claim();
    while (item >= 0) {
      const int64_t next = claim();
      body(item, next, thread);
      item = next;
    }
  }
}

}  // namespace raggedattn
