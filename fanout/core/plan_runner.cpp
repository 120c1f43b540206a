#include "fanout/core/plan_runner.hpp"

namespace batchgate::fanout {

void plan_runner::run() {
    {
        std::lock_guard lock(mutex_);
        if (pumping_) {
            again_ = true;
            return;
        }
        pumping_ = true;
    }
    for (;;) {
        dependency_plan::step s;
        bool report = false;
        {
            std::lock_guard lock(mutex_);
            s = plan_.next(concurrency_ > plan_.running() ? concurrency_ - plan_.running() : 0);
            if (s.start.empty() && s.skip.empty()) {
                if (again_) {
                    again_ = false;
                    continue;
                }
                pumping_ = false;
                report = plan_.done() && !reported_;
                reported_ = reported_ || report;
            }
            again_ = false;
        }
        if (s.start.empty() && s.skip.empty()) {
            if (report) hooks_.done();
            return;
        }
        for (std::size_t i : s.skip) hooks_.skip(i);
        for (std::size_t i : s.start) hooks_.start(i);
    }
}

void plan_runner::finish(std::size_t i, int status) {
    {
        std::lock_guard lock(mutex_);
        plan_.finish(i, status);
    }
    run();
}

}  // namespace batchgate::fanout
