#include "fanout/core/request_check.hpp"

#include <array>

namespace batchgate::fanout {

namespace {

// RFC 9110 5.6.2 tchar.
bool is_tchar(unsigned char c) {
    if (c >= '0' && c <= '9') return true;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
    return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool is_vchar(unsigned char c) { return c > 0x20 && c < 0x7f; }

// For messages: bytes are shown escaped, never echoed raw into a JSON answer or a log line.
std::string where(std::string_view what, std::size_t at, unsigned char c) {
    static constexpr char hex[] = "0123456789abcdef";
    return std::string(what) + " holds byte 0x" + hex[c >> 4] + hex[c & 15] + " at offset " + std::to_string(at);
}

}  // namespace

std::optional<std::string> check_method(std::string_view method) {
    static constexpr std::array<std::string_view, 7> allowed = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (auto m : allowed)
        if (method == m) return std::nullopt;
    for (unsigned char c : method)
        if (!is_tchar(c)) return std::string("method is not an HTTP method token");
    return "method " + std::string(method) + " is not allowed in a sub-request (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)";
}

std::optional<std::string> check_target(std::string_view target) {
    if (target.empty()) return std::string("url is empty");
    for (std::size_t i = 0; i < target.size(); ++i)
        if (!is_vchar(static_cast<unsigned char>(target[i]))) return where("url", i, static_cast<unsigned char>(target[i]));
    return std::nullopt;
}

std::optional<std::string> check_field(std::string_view name, std::string_view value) {
    if (name.empty()) return std::string("a header has an empty name");
    for (std::size_t i = 0; i < name.size(); ++i)
        if (!is_tchar(static_cast<unsigned char>(name[i])))
            return where("header name", i, static_cast<unsigned char>(name[i]));
    for (std::size_t i = 0; i < value.size(); ++i) {
        const auto c = static_cast<unsigned char>(value[i]);
        if (!is_vchar(c) && c != ' ' && c != '\t') return where("header " + std::string(name), i, c);
    }
    return std::nullopt;
}

std::optional<std::string> check_request(std::string_view method, std::string_view target,
                                         const std::vector<std::pair<std::string, std::string>>& headers) {
    if (auto e = check_method(method)) return e;
    return check_message(target, headers);
}

std::optional<std::string> check_message(std::string_view target,
                                         const std::vector<std::pair<std::string, std::string>>& headers) {
    if (auto e = check_target(target)) return e;
    for (const auto& [name, value] : headers)
        if (auto e = check_field(name, value)) return e;
    return std::nullopt;
}

}  // namespace batchgate::fanout
