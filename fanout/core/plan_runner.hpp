// Runs a dependency_plan with bounded concurrency. Thread-safe: completions may be reported
// from any thread, and a start hook may report its own completion before it returns. Hooks
// are never called under the lock (CP.22) and never recursively: one thread at a time pumps,
// and work that arrives meanwhile makes that thread go round once more.
#pragma once

#include <cstddef>
#include <functional>
#include <mutex>

#include "fanout/core/dependency_plan.hpp"

namespace batchgate::fanout {

class plan_runner {
public:
    struct hooks {
        std::function<void(std::size_t)> start;  // send step i; report with finish(i, status)
        std::function<void(std::size_t)> skip;   // step i will never start (a dependency failed)
        std::function<void()> done;              // every step finished or skipped; called once
    };

    plan_runner(dependency_plan plan, std::size_t concurrency, hooks h)
        : plan_(std::move(plan)), concurrency_(concurrency ? concurrency : 1), hooks_(std::move(h)) {}
    plan_runner(const plan_runner&) = delete;
    plan_runner& operator=(const plan_runner&) = delete;

    // Starts what can start now.
    void run();
    // Step i (started, or rejected without being sent) is over with this HTTP status.
    void finish(std::size_t i, int status);

private:
    std::mutex mutex_;
    dependency_plan plan_;
    std::size_t concurrency_;
    hooks hooks_;
    bool pumping_ = false;
    bool again_ = false;
    bool reported_ = false;
};

}  // namespace batchgate::fanout
