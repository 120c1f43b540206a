#include "routes/route_table.hpp"

#include <algorithm>

namespace batchgate::routes {

route_table::route_table(const config::gateway_config& config) {
    for (const auto& r : config.routes)
        for (const auto& m : r.matches) {
            entry e{&r, &m, nullptr};
            if (!m.path.empty()) e.tmpl = std::make_unique<path_template>(m.path);
            entries_.push_back(std::move(e));
        }
}

match_result route_table::match(std::string_view method, std::string_view path) const {
    match_result result;
    for (const auto& e : entries_) {
        const auto& methods = e.match->methods;
        if (!methods.empty() && std::find(methods.begin(), methods.end(), method) == methods.end())
            continue;
        if (e.tmpl) {
            if (!e.tmpl->match(path, result.path_params)) continue;
        } else if (!path.starts_with(e.match->prefix)) {
            continue;
        }
        result.route = e.route;
        result.entry = e.match;
        return result;
    }
    return result;
}

}  // namespace batchgate::routes
