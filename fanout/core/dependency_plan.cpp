#include "fanout/core/dependency_plan.hpp"

#include <algorithm>

namespace batchgate::fanout {

std::optional<std::string> find_cycle(const std::vector<std::vector<std::size_t>>& deps,
                                      const std::vector<std::string>& ids) {
    // Depth-first search with colours; the grey stack at a back edge is the cycle.
    enum colour { white, grey, black };
    std::vector<colour> c(deps.size(), white);
    std::vector<std::size_t> stack;
    std::optional<std::string> found;
    auto visit = [&](auto&& self, std::size_t i) -> void {
        c[i] = grey;
        stack.push_back(i);
        for (std::size_t d : deps[i]) {
            if (found) return;
            if (c[d] == grey) {
                std::string text;
                bool in = false;
                for (std::size_t s : stack) {
                    in = in || s == d;
                    if (in) text += "\"" + ids[s] + "\" -> ";
                }
                found = "dependsOn forms a cycle: " + text + "\"" + ids[d] + "\"";
                return;
            }
            if (c[d] == white) self(self, d);
        }
        stack.pop_back();
        c[i] = black;
    };
    for (std::size_t i = 0; i < deps.size() && !found; ++i)
        if (c[i] == white) visit(visit, i);
    return found;
}

dependency_plan::dependency_plan(std::vector<std::vector<std::size_t>> deps)
    : deps_(std::move(deps)), states_(deps_.size(), state::waiting) {}

dependency_plan::step dependency_plan::next(std::size_t free_slots) {
    step out;
    // Skips cascade down chains, so repeat until nothing changes (n is at most a few hundred).
    for (bool changed = true; changed;) {
        changed = false;
        for (std::size_t i = 0; i < deps_.size(); ++i) {
            if (states_[i] != state::waiting) continue;
            bool failed = false;
            for (std::size_t d : deps_[i]) failed = failed || states_[d] == state::failed;
            if (failed) {
                states_[i] = state::failed;
                ++finished_;
                out.skip.push_back(i);
                changed = true;
            }
        }
    }
    std::sort(out.skip.begin(), out.skip.end());
    for (std::size_t i = 0; i < deps_.size() && out.start.size() < free_slots; ++i) {
        if (states_[i] != state::waiting) continue;
        bool ready = true;
        for (std::size_t d : deps_[i]) ready = ready && states_[d] == state::succeeded;
        if (!ready) continue;
        states_[i] = state::running;
        ++running_;
        out.start.push_back(i);
    }
    return out;
}

void dependency_plan::finish(std::size_t i, int status) {
    if (states_[i] == state::succeeded || states_[i] == state::failed) return;
    if (states_[i] == state::running) --running_;
    states_[i] = status >= 200 && status < 300 ? state::succeeded : state::failed;
    ++finished_;
}

}  // namespace batchgate::fanout
