// The dependsOn graph of a $batch call: validation (unknown ids, cycles) and the order in which
// sub-requests may start. Pure; the engine owns one per call and guards it with its lock.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace batchgate::fanout {

// An error text when deps (indices into the same list) form a cycle; names the ids in it.
std::optional<std::string> find_cycle(const std::vector<std::vector<std::size_t>>& deps,
                                      const std::vector<std::string>& ids);

// Which sub-requests may start: those whose dependencies all finished with a 2xx status.
// A request whose dependency failed (or was itself skipped) is skipped and never starts.
class dependency_plan {
public:
    explicit dependency_plan(std::vector<std::vector<std::size_t>> deps);

    struct step {
        std::vector<std::size_t> start;  // now marked running, in request order
        std::vector<std::size_t> skip;   // now marked skipped (424), in request order
    };
    // Up to free_slots requests to start now, and every request that can no longer start.
    step next(std::size_t free_slots);
    // Records the status of a running (or never-sent, e.g. rejected) request.
    void finish(std::size_t i, int status);
    // Marks a request finished without running it (rejected before sending).
    void reject(std::size_t i, int status) { finish(i, status); }

    std::size_t running() const { return running_; }
    bool done() const { return finished_ == deps_.size(); }

private:
    enum class state { waiting, running, succeeded, failed };
    std::vector<std::vector<std::size_t>> deps_;
    std::vector<state> states_;
    std::size_t running_ = 0;
    std::size_t finished_ = 0;
};

}  // namespace batchgate::fanout
