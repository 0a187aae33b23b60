// Spreads a plan's work items over threads.

#ifndef RAGGEDATTN_SRC_THREADING_H_
#define RAGGEDATTN_SRC_THREADING_H_

#include <cstdint>
#include <functional>

namespace raggedattn {

// Returns the number of cores this process may run on (at least 1).
int DefaultThreadCount();

// Calls body(item, thread) for every item in [0, num_items) on at most
// num_threads threads; thread is in [0, num_threads). Which thread runs an
// item is unspecified, so bodies must not depend on it beyond scratch space.
void ParallelFor(int num_threads, int64_t num_items,
                 const std::function<void(int64_t, int)>& body);

// As ParallelFor, but each thread claims its next item before it runs the
// current one and passes it as body(item, next, thread), next == -1 when
// there is none, so the body can prefetch the next item's memory while it
// finishes this one. Items are claimed in increasing order.
void ParallelForWithNext(
    int num_threads, int64_t num_items,
    const std::function<void(int64_t, int64_t, int)>& body);

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_THREADING_H_
