// Pure, Beast-free building of upstream batch calls and splitting of their answers.
// Everything here is a function of (route settings, inputs): no clock, no I/O, no globals.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "routes/route_table.hpp"

namespace batchgate::coalescer {

// What the coalescer needs to know of one caller's request.
struct caller_request {
    std::string_view method;
    std::string_view path;                  // raw path, no query
    std::string_view query;                 // raw query string, no '?'
    routes::param_list path_params;         // from the route match, decoded
    // Header lookup by lower-case name; nullopt when absent.
    std::function<std::optional<std::string_view>(std::string_view)> header;
    std::string_view body;
};

// Values shared by every caller of one partition; the batch call is built from them.
struct partition_values {
    std::map<std::string, std::string> path;
    std::map<std::string, std::string> query;
    std::map<std::string, std::string> headers;  // lower-case names; includes authorization/cookie
                                                 // when the partition includes credentials
};

struct partition {
    std::string key;  // unambiguous encoding of route name + every partition value
    partition_values values;
};

// Partition of a caller. Absent and empty values are distinguished in the key.
partition make_partition(std::string_view route_name, const config::coalesce_settings& settings,
                         const caller_request& request);

// The item key of a caller, or an error message (missing key, body not JSON, key not a
// string or number). Numbers become their JSON text ("7").
struct key_result {
    std::optional<std::string> key;
    std::string error;
};
key_result extract_key(const config::coalesce_settings& settings, const caller_request& request);

// Estimated bytes one item adds to the batch call (for max_batch_bytes).
std::size_t item_cost(const config::coalesce_settings& settings, std::string_view key);

struct outgoing_request {
    std::string method;
    std::string target;  // path + query
    std::vector<std::pair<std::string, std::string>> headers;  // partition headers + forwarded + content-type
    std::string body;
};

// The upstream batch call for these distinct keys (in arrival order).
outgoing_request build_batch_request(const config::coalesce_settings& settings,
                                     const partition_values& values,
                                     const std::vector<std::string>& keys);

// One caller's answer, split from the batch response. body is JSON text.
struct item_outcome {
    int status = 200;
    std::string body;
};

struct split_outcome {
    // Non-empty when the whole answer is unusable (not JSON, items not an array, by_position
    // with the wrong length); then items is empty and every caller gets 502.
    std::string error;
    // One entry per requested key: found items, items with a per-item error status, and
    // missing keys (missing_status with a JSON error body).
    std::unordered_map<std::string, item_outcome> items;
    std::size_t ignored_items = 0;  // items without a usable key, or with a key nobody asked for
};

split_outcome split_batch_response(const config::coalesce_settings& settings,
                                   std::string_view route_name, std::string_view body,
                                   const std::vector<std::string>& keys);

}  // namespace batchgate::coalescer
