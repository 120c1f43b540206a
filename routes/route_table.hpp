// Ordered route table: the first route with a match entry whose method and path (template or
// prefix) match wins. Built once per config; immutable and shared across threads afterwards.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "text/url.hpp"

namespace batchgate::routes {

struct match_result {
    const config::route_settings* route = nullptr;  // nullptr: no route matched
    const config::route_match* entry = nullptr;     // the entry of route->matches that matched
    param_list path_params;
};

class route_table {
public:
    // config must outlive the table (both live in the same runtime snapshot).
    explicit route_table(const config::gateway_config& config);
    // path is the raw path without the query string.
    match_result match(std::string_view method, std::string_view path) const;

private:
    struct entry {
        const config::route_settings* route;
        const config::route_match* match;
        std::unique_ptr<path_template> tmpl;  // null for prefix entries
    };
    // One per match entry, routes in order and each route's entries in order.
    std::vector<entry> entries_;
};

}  // namespace batchgate::routes
