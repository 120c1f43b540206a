// Worker threads are shards: each runs one io_context of its own, with its own traffic
// listener (SO_REUSEPORT), its client connections and the upstream connections it opened, so
// a connection's handlers always run on one thread and need no strand. What crosses shards:
// a caller whose coalescing partition another shard owns (shard_of) hands its item over and
// gets its answer back by a post; the upstream pools, the memory budget and the metrics are
// shared and thread-safe.
#pragma once

#include <cstddef>
#include <functional>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>

namespace batchgate::gateway {

using shard_executor = boost::asio::io_context::executor_type;

namespace detail {
inline thread_local std::size_t this_shard = 0;
}

// The shard the calling thread runs; 0 on a thread that is no worker (main, tests).
inline std::size_t current_shard() noexcept { return detail::this_shard; }
inline void set_current_shard(std::size_t shard) noexcept { detail::this_shard = shard; }

// The shard that owns a coalescing partition: the same key always lands on the same shard,
// so its callers gather in one batch whichever threads their connections run on.
inline std::size_t shard_of(std::string_view partition_key, std::size_t shards) noexcept {
    return shards <= 1 ? 0 : std::hash<std::string_view>{}(partition_key) % shards;
}

// The calling thread's shard as an index into `shards` things kept one per shard: 0 when it
// is out of range (a thread that is no worker, or a pool built for fewer shards in a test).
inline std::size_t shard_here(std::size_t shards) noexcept { return current_shard() < shards ? current_shard() : 0; }

// The executor of the calling thread's shard, out of the shards' executors.
inline const shard_executor& executor_here(const std::vector<shard_executor>& shards) {
    return shards[shard_here(shards.size())];
}

}  // namespace batchgate::gateway
