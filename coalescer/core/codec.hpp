// Pure, Beast-free building of upstream batch calls and splitting of their answers.
// Everything here is a function of (route settings, inputs): no clock, no I/O, no globals.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "text/json_text.hpp"
#include "text/url.hpp"

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
    // Bytes of this partition's batch call besides its items (batch_overhead), when the route
    // has a max_batch_bytes; 0 otherwise.
    std::size_t overhead = 0;
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
// arrives (default template: the key itself as a JSON string on json_body, null on a query
// encoding, which sends only keys). Error when a placeholder's type
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
    item_outcome() = default;
    item_outcome(int s, std::string b) : status(s), body(std::move(b)) {}

    int status = 200;
    std::string body;
    // Set when the item's list has a response template: the body is rendered per caller by
    // render_answer (it may use the caller's own request), from this copy of the item.
    nlohmann::json entry;
    const config::result_list* render = nullptr;
};

struct split_outcome {
    // Non-empty when the whole answer is unusable (not JSON, a result list present but not an
    // array, the only list missing, by_position with the wrong length); then items is empty and
    // every caller gets 502.
    std::string error;
    // items[i] answers keys[i]: found items, items with a per-item error status, and missing
    // keys (missing_status with a JSON error body). Lists are walked in order: a key in two
    // lists gets the first list's answer. A key asked n times (same_key: in_batch) takes the
    // n entries for it in answer order; any other count is a 502 for each of them. A 204 item
    // has an empty body.
    std::vector<std::string> keys;
    std::vector<item_outcome> items;
    std::size_t ignored_items = 0;  // items without a usable key, or with a key nobody asked for

    // The answer to the occurrence-th request of key (0 = first), or nullptr.
    const item_outcome* find(std::string_view key, std::size_t occurrence = 0) const;
    const item_outcome& at(std::string_view key) const {
        if (const item_outcome* o = find(key)) return *o;
        throw std::out_of_range("split_outcome: no such key");
    }
};

// An answer nested deeper than max_json_depth (limits.max_json_depth) is unusable.
split_outcome split_batch_response(const config::coalesce_settings& settings,
                                   std::string_view route_name, std::string_view body,
                                   std::vector<std::string> keys,
                                   std::size_t max_json_depth = routes::max_json_depth_cap);

// Bytes of a partition's batch call besides its items: the batch call (the body for json_body,
// the request target for query encodings) is exactly batch_overhead + the sum of item_cost of
// its items. For max_batch_bytes.
std::size_t batch_overhead(const config::coalesce_settings& settings, const partition_values& values);

// The values of the caller's own request that the route's response templates use (an object
// keyed "path.id", "body./title", "method", ...), kept with the caller until its answer; null
// when the route has no template.
nlohmann::json caller_values(const config::coalesce_settings& settings, const caller_request& request);

// A caller's body: the outcome's body, or its template rendered with the item, the caller's
// values and key. error set (502 for the caller) when a typed placeholder does not convert.
struct rendered_answer {
    std::string body;
    std::string error;
};
rendered_answer render_answer(const item_outcome& outcome, const nlohmann::json& caller_values, std::string_view key);

// The keys a refused batch answer names as failed (coalesce.failed_items), in answer order;
// nullopt when the route has no failed_items or the answer names none usable.
std::optional<std::vector<std::string>> named_failures(const config::coalesce_settings& settings, std::string_view body,
                                                       std::size_t max_json_depth);

}  // namespace batchgate::coalescer
