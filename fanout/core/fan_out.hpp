// Per-API fan-out (route mode fan_out): a client's batch call becomes one upstream call per
// item, and the per-item answers are assembled into the batch answer the client expects.
// Pure and Beast-free: validating the client's call, building each item's upstream request,
// rendering each item's result and the envelope. fanout/fan_out.cpp does the I/O.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "text/template.hpp"

namespace batchgate::fanout {

// Header lookup by lower-case name on the client's request.
using header_lookup = std::function<std::optional<std::string>(std::string_view)>;

// The client's call, validated. error non-empty: answer 400 and send nothing.
struct fan_out_call {
    json body;
    std::vector<json> items;
    std::string error;
};
fan_out_call parse_fan_out(const config::fan_out_settings& settings, std::string_view body);

struct item_request {
    std::string method;
    std::string target;  // path + query
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::string error;   // non-empty: not sent; the item is answered 400 with this message
};
item_request build_item_request(const config::fan_out_settings& settings, const fan_out_call& call,
                                const header_lookup& header, std::size_t index);

// What came back for one item: the upstream's status and body (JSON when it parses, else the
// text), or the gateway's own status (502/504) and {"error": "..."} when no answer came.
struct item_result {
    int status = 0;
    json response;
    bool ok() const { return status >= 200 && status < 300; }
};

// The item's entry in the answer: response.success for 2xx, response.error otherwise.
json render_item(const config::fan_out_settings& settings, const fan_out_call& call, const header_lookup& header,
                 std::size_t index, const item_result& result);

// The whole answer body, from the entries in item order.
std::string render_envelope(const config::fan_out_settings& settings, const fan_out_call& call,
                            const header_lookup& header, std::vector<json> entries, std::size_t succeeded,
                            std::chrono::system_clock::time_point now);

// "2026-02-16T10:00:00Z"
std::string utc_iso8601(std::chrono::system_clock::time_point t);

}  // namespace batchgate::fanout
