// The histogram slot of the calling thread (metrics::histogram, metrics/metrics.cpp): below
// histogram::exclusive_slots, a slot no other live thread has, written with plain stores; at
// it, the slot every thread past those shares, written with atomic adds. A thread takes its
// slot at its first observation and gives it back when it ends.
#pragma once

#include <cstddef>

namespace batchgate::metrics {

std::size_t this_thread_slot() noexcept;

}  // namespace batchgate::metrics
