#include "src/threading.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>

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

}  // namespace raggedattn
