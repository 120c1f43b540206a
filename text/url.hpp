// URL text: path templates ("/users/{id}"), percent-encoding, query strings, request targets.
// Pure; the route table (routes/route_table.hpp) matches with path_template, the config
// loader checks templates with it, and every place that builds an upstream target uses the rest.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace batchgate::routes {

using param_list = std::vector<std::pair<std::string, std::string>>;

// "/users/{id}" compiled into literal and parameter segments. A parameter matches one
// non-empty segment; values are percent-decoded.
class path_template {
public:
    // Throws std::invalid_argument for a malformed template ("/users/{", "{}", duplicate names).
    explicit path_template(std::string_view text);
    bool match(std::string_view path, param_list& params) const;
    const std::vector<std::string>& param_names() const { return names_; }

private:
    struct segment {
        std::string text;  // literal text, or the parameter name
        bool is_param = false;
    };
    std::vector<segment> segments_;
    std::vector<std::string> names_;
};

// RFC 3986 character classes.
bool is_hex_digit(char c);
bool is_unreserved(char c);  // ALPHA / DIGIT / "-" / "." / "_" / "~"
bool is_sub_delim(char c);   // "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="

// Percent-decoding ('+' is a space only in query strings). Invalid escapes are kept verbatim.
std::string url_decode(std::string_view text, bool plus_is_space);
// Percent-encoding of everything except RFC 3986 unreserved characters.
std::string url_encode(std::string_view text);
// url_encode(text) appended to out, and its size: without a string of its own (a batch call's
// query, one key after another).
void append_url_encoded(std::string& out, std::string_view text);
std::size_t url_encoded_size(std::string_view text);
// "a=1&b=2&a=3" -> {{a,1},{b,2},{a,3}}, decoded, in order.
param_list parse_query(std::string_view query);
// Splits a request target into path and query (without '?').
std::pair<std::string_view, std::string_view> split_target(std::string_view target);

// True when the path (no query) holds a "." or ".." segment, also percent-encoded, decoded up
// to three times ("%2e%2e", "%252e%252e"). Upstream paths built from caller values must not:
// "/api/characters/../abilities/batch" names another resource.
bool has_dot_segment(std::string_view path);

}  // namespace batchgate::routes
