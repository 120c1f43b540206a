// Hop-by-hop header fields (RFC 9110 7.6.1): they describe one connection and never cross
// the proxy.
#pragma once

#include <string>
#include <vector>

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/rfc7230.hpp>

namespace batchgate::gateway {

namespace http = boost::beast::http;

inline bool is_hop_by_hop(http::field f) {
    // "expect" too: the gateway has the whole body already, and a 100 Continue from the
    // upstream must never be taken for its answer.
    switch (f) {
        case http::field::connection:
        case http::field::keep_alive:
        case http::field::proxy_authenticate:
        case http::field::proxy_authorization:
        case http::field::te:
        case http::field::trailer:
        case http::field::transfer_encoding:
        case http::field::upgrade:
        case http::field::proxy_connection:
        case http::field::expect:
            return true;
        default:
            return false;
    }
}

// Removes hop-by-hop headers, including any the Connection header names.
template <class Fields>
inline void strip_hop_by_hop(Fields& fields) {
    std::vector<std::string> named;
    for (const auto& f : fields)
        if (f.name() == http::field::connection)
            for (auto token : http::token_list(f.value())) named.emplace_back(token);
    for (const auto& n : named) fields.erase(n);
    for (auto it = fields.begin(); it != fields.end();) {
        // Beast knows every hop-by-hop name, so the enum decides (no string compares).
        if (it->name() != http::field::unknown && is_hop_by_hop(it->name()))
            it = fields.erase(it);
        else
            ++it;
    }
}

// A client's header fields made ready to go upstream: hop-by-hop fields removed (after
// X-Forwarded-For and X-Forwarded-Host were taken from what the client sent, before its
// Connection header could strip them), Host removed (the pool sets the upstream's), and
// X-Forwarded-For, -Proto and -Host set.
template <class Fields>
inline void prepare_for_upstream(Fields& fields, const std::string& client_ip, std::string_view proto) {
    std::string xff = client_ip;
    if (auto it = fields.find("X-Forwarded-For"); it != fields.end()) xff = std::string(it->value()) + ", " + client_ip;
    std::string forwarded_host;
    if (auto it = fields.find(http::field::host); it != fields.end()) forwarded_host = std::string(it->value());
    strip_hop_by_hop(fields);
    fields.erase(http::field::host);
    fields.set("X-Forwarded-For", xff);
    fields.set("X-Forwarded-Proto", proto);
    if (!forwarded_host.empty()) fields.set("X-Forwarded-Host", forwarded_host);
}

}  // namespace batchgate::gateway
