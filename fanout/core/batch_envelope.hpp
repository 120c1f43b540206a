// The generic JSON batch envelope ({"requests":[...]} -> {"responses":[...]}): parsing and
// validation of the whole call, checks of one sub-request's URL, and the JSON of one entry of
// the answer. Pure and Beast-free; fanout/batch_envelope.cpp runs the sub-requests.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace batchgate::fanout {

struct sub_request {
    std::string id;
    std::string method;  // upper case
    std::string url;     // as sent
    std::vector<std::pair<std::string, std::string>> headers;
    std::optional<nlohmann::json> body;   // absent: no body
    std::vector<std::size_t> depends_on;  // indices into the request list
};

enum class envelope_error {
    none,
    bad_request,  // 400: not JSON, wrong shape, duplicate or unknown ids, a cycle
    too_many,     // 413: more than max_requests
};

struct parsed_envelope {
    std::vector<sub_request> requests;
    envelope_error error = envelope_error::none;
    std::string message;
};

// Validates the whole call: nothing is sent when error != none.
parsed_envelope parse_envelope(std::string_view body, std::size_t max_requests);

// Why this sub-request URL may not be dispatched (answered 400 in its entry), or nullopt:
// it must be an origin-form path ("/users/7?x=1"); absolute URLs, "//host", "..", "." segments
// (also percent-encoded), backslashes and control characters are refused.
std::optional<std::string> check_sub_url(std::string_view url);

// True when the sub-request names this header itself (case-insensitive).
bool names_header(const sub_request& r, std::string_view name);

// The body bytes to send and whether it is JSON (objects, arrays, numbers, booleans; a JSON
// string is sent as its raw text).
std::pair<std::string, bool> encode_body(const nlohmann::json& body);

// One entry of "responses": the body is embedded as JSON when it is JSON (by content type, or
// when it parses), as a string otherwise, and left out when empty. JSON nested deeper than
// max_json_depth (limits.max_json_depth) makes the entry a 502.
nlohmann::json response_entry(const std::string& id, int status,
                              const std::vector<std::pair<std::string, std::string>>& headers,
                              std::string_view content_type, const std::string& body,
                              std::size_t max_json_depth);

// A JSON error body for one entry that never reached a route (400, 424, 504).
nlohmann::json error_entry(const std::string& id, int status, std::string_view code, const std::string& message);

}  // namespace batchgate::fanout
