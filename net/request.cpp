#include "net/request.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/status.hpp>

namespace batchgate::gateway {

namespace {

constexpr std::string_view json_type = "application/json";

}  // namespace

std::optional<std::string> header_value(const request_t& req, std::string_view name) {
    auto [first, last] = req.equal_range(name);
    if (first == last) return std::nullopt;
    const std::string_view sep = boost::beast::iequals(name, "cookie") ? "; " : ", ";
    std::string all;
    for (auto it = first; it != last; ++it) {
        if (it != first) all += sep;
        all += std::string_view(it->value().data(), it->value().size());
    }
    return all;
}

response_t to_response(answer a, unsigned version) {
    if (auto* res = std::get_if<response_t>(&a)) {
        res->version(version);
        return std::move(*res);
    }
    auto& c = std::get<composed_answer>(a);
    response_t res{static_cast<http::status>(c.status), version};
    std::string_view rest = c.fields;
    while (!rest.empty()) {
        const auto end = rest.find("\r\n");
        const auto line = rest.substr(0, end);
        rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 2);
        const auto colon = line.find(": ");
        if (colon == std::string_view::npos) continue;  // never composed
        res.insert(line.substr(0, colon), line.substr(colon + 2));
    }
    res.body() = std::move(c.body);
    return res;
}

response_t error_response(gateway_error e, const std::string& message, const std::string& route, unsigned version) {
    response_t res{static_cast<http::status>(http_status(e)), version ? version : 11};
    res.set(http::field::content_type, json_type);
    res.body() = error_body(e, message, route);
    if (e == gateway_error::overloaded || e == gateway_error::shutting_down) res.set(http::field::retry_after, "1");
    res.prepare_payload();
    return res;
}

}  // namespace batchgate::gateway
