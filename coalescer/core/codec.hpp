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

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "routes/json_text.hpp"
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
    std::map<std::string, nlohmann::json> body;  // partition.body pointer -> JSON value (absent: no entry)
};

struct partition {
    std::string key;  // unambiguous encoding of route name + every partition value
    partition_values values;
};

// Partition of a caller. Absent and empty values are distinguished in the key. Body pointers
// (partition.body) compare by the JSON text of their value; a body that is not JSON has none.
partition make_partition(std::string_view route_name, const config::coalesce_settings& settings,
                         const caller_request& request);

// The item key of a caller, or an error message (missing key, body not JSON, key not a
// string or number). Numbers become their JSON text ("7"). With key.generate, a missing
// (when_missing) or any (always) key is a generated correlation id and generated is true.
struct key_result {
    std::optional<std::string> key;
    std::string error;
    bool generated = false;
};
key_result extract_key(const config::coalesce_settings& settings, const caller_request& request);

// Estimated bytes one item adds to the batch call (for max_batch_bytes).
std::size_t item_cost(const config::coalesce_settings& settings, std::string_view key);
// Bytes a built item (build_item) adds to a json_body batch call: its JSON text + 1.
std::size_t item_cost(const nlohmann::json& item);

// A correlation id unique for this process's lifetime ("bg-3f9a2c-17"): for callers whose
// request has no natural key (creates), see docs/design/write-coalescing.md section 2.
std::string generate_correlation_id();

// The item one caller contributes to the batch call, built from request.item when the caller
// arrives (default template: the key itself as a JSON string). Error when a placeholder's type
// conversion fails, in request.item or in a batch template for this caller's partition values,
// or when the template uses the body and it is not JSON (the caller then gets 400). The body is
// parsed at most once.
struct item_build {
    std::optional<nlohmann::json> item;
    std::string error;
};
item_build build_item(const config::coalesce_settings& settings, const caller_request& request,
                      const std::string& key);

// The status a caller gets for an item status, after response.success_status (a 200 becomes
// the caller's method's status, e.g. 201 for POST). A 204 answer carries no body: drop the
// split body when this returns 204.
int apply_success_status(const config::coalesce_settings& settings, std::string_view method, int status);

struct outgoing_request {
    std::string method;
    std::string target;  // path + query
    std::vector<std::pair<std::string, std::string>> headers;  // partition headers + forwarded + content-type
    std::string body;
};

// The upstream batch call for these distinct keys (in arrival order). items[i] is the built
// item of keys[i] (json_body: "{items}" becomes the array of items; query encodings use keys).
// Empty items means the default items (the keys as JSON strings).
outgoing_request build_batch_request(const config::coalesce_settings& settings,
                                     const partition_values& values,
                                     const std::vector<std::string>& keys,
                                     const std::vector<nlohmann::json>& items);

// One caller's answer, split from the batch response. body is JSON text.
struct item_outcome {
    int status = 200;
    std::string body;
};

struct split_outcome {
    // Non-empty when the whole answer is unusable (not JSON, a result list present but not an
    // array, the only list missing, by_position with the wrong length); then items is empty and
    // every caller gets 502.
    std::string error;
    // One entry per requested key: found items, items with a per-item error status, and
    // missing keys (missing_status with a JSON error body). Lists are walked in order: a key
    // in two lists gets the first list's answer. A 204 item has an empty body.
    std::unordered_map<std::string, item_outcome> items;
    std::size_t ignored_items = 0;  // items without a usable key, or with a key nobody asked for
};

// An answer nested deeper than max_json_depth (limits.max_json_depth) is unusable.
split_outcome split_batch_response(const config::coalesce_settings& settings,
                                   std::string_view route_name, std::string_view body,
                                   const std::vector<std::string>& keys,
                                   std::size_t max_json_depth = routes::max_json_depth_cap);

}  // namespace batchgate::coalescer
