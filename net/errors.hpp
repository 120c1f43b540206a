// Every error a client sees comes from here: one enum, one status mapping, one JSON shape
// {"error":"<code>","message":"...","route":"<name>"}.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace batchgate {

enum class gateway_error {
    bad_request,          // 400: malformed request, missing item key, invalid JSON body
    not_found,            // 404: no route matched, or the item is absent from the batch answer
    method_not_allowed,   // 405: admin endpoints other than GET/HEAD
    payload_too_large,    // 413
    headers_too_large,    // 431
    uri_too_long,         // 414: the request-target alone exceeds limits.max_header
    not_implemented,      // 501: a transfer coding other than chunked
    overloaded,           // 503: too many callers waiting on a route
    shutting_down,        // 503
    upstream_unreachable, // 502: connection refused / reset
    upstream_bad_response,// 502: malformed batch answer, 5xx, unexpected status
    upstream_timeout,     // 504
    internal,             // 500
    client_closed,        // 499 (nginx's): the caller hung up before its batch was sent
    answer_over_budget,   // 502: the request went upstream, but limits.max_buffered cannot hold
                          // its answer. It may have taken effect: no Retry-After (unlike overloaded)
};

inline int http_status(gateway_error e) {
    switch (e) {
        case gateway_error::bad_request: return 400;
        case gateway_error::not_found: return 404;
        case gateway_error::method_not_allowed: return 405;
        case gateway_error::payload_too_large: return 413;
        case gateway_error::headers_too_large: return 431;
        case gateway_error::uri_too_long: return 414;
        case gateway_error::not_implemented: return 501;
        case gateway_error::overloaded: return 503;
        case gateway_error::shutting_down: return 503;
        case gateway_error::upstream_unreachable: return 502;
        case gateway_error::upstream_bad_response: return 502;
        case gateway_error::upstream_timeout: return 504;
        case gateway_error::internal: return 500;
        case gateway_error::client_closed: return 499;
        case gateway_error::answer_over_budget: return 502;
    }
    return 500;
}

inline std::string_view error_code_name(gateway_error e) {
    switch (e) {
        case gateway_error::bad_request: return "bad_request";
        case gateway_error::not_found: return "not_found";
        case gateway_error::method_not_allowed: return "method_not_allowed";
        case gateway_error::payload_too_large: return "payload_too_large";
        case gateway_error::headers_too_large: return "headers_too_large";
        case gateway_error::uri_too_long: return "uri_too_long";
        case gateway_error::not_implemented: return "not_implemented";
        case gateway_error::overloaded: return "overloaded";
        case gateway_error::shutting_down: return "shutting_down";
        case gateway_error::upstream_unreachable: return "upstream_unreachable";
        case gateway_error::upstream_bad_response: return "upstream_bad_response";
        case gateway_error::upstream_timeout: return "upstream_timeout";
        case gateway_error::internal: return "internal";
        case gateway_error::client_closed: return "client_closed_request";
        case gateway_error::answer_over_budget: return "answer_over_budget";
    }
    return "internal";
}

// JSON error body naming the route ("" when no route is involved).
inline std::string error_body(std::string_view code, std::string_view message,
                              std::string_view route) {
    nlohmann::json j{{"error", code}, {"message", message}};
    if (!route.empty()) j["route"] = route;
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

inline std::string error_body(gateway_error e, std::string_view message, std::string_view route) {
    return error_body(error_code_name(e), message, route);
}

}  // namespace batchgate
