// Fuzz target: route matching (routes/route_table.hpp) and URL helpers (text/url.hpp) on a
// request target, against the route tables of every example. Checks round trips the gateway
// relies on.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "fuzz_common.hpp"
#include "routes/route_table.hpp"
#include "text/url.hpp"

using namespace batchgate;

namespace {

constexpr std::string_view methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get"};

bool unreserved(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz::input in(data, size);
    const std::string_view method = methods[in.byte() % std::size(methods)];
    const std::string_view target = in.rest();

    auto [path, query] = routes::split_target(target);
    fuzz::check(path.size() + query.size() + (path.size() < target.size() ? 1 : 0) == target.size(),
                "split_target lost bytes");
    for (const auto& c : fuzz::examples().configs) {
        auto m = c.table->match(method, path);
        if (!m.route) continue;
        fuzz::check(m.entry != nullptr, "a match without its entry");
        for (const auto& [name, value] : m.path_params) fuzz::check(!name.empty(), "a path parameter without a name");
    }

    const std::string encoded = routes::url_encode(target);
    for (std::size_t i = 0; i < encoded.size(); ++i)
        fuzz::check(unreserved(encoded[i]) || (encoded[i] == '%' && i + 2 < encoded.size()),
                    "url_encode left a reserved character");
    fuzz::check(routes::url_decode(encoded, false) == target, "url_decode(url_encode(x)) != x");
    fuzz::check(routes::url_decode(encoded, true) == target, "url_decode(url_encode(x), plus) != x");
    (void)routes::url_decode(target, true);
    (void)routes::parse_query(query);
    const bool dots = routes::has_dot_segment(path);
    // A segment that is literally "." or ".." must always be seen.
    if (path == "/.." || path.starts_with("/../") || path.ends_with("/..") || path.find("/../") != std::string_view::npos)
        fuzz::check(dots, "has_dot_segment missed a literal \"..\"");

    try {
        routes::path_template t(target);
        routes::param_list params;
        // Literal segments equal themselves and a "{name}" segment is a non-empty value.
        fuzz::check(t.match(target, params), "a path template does not match its own text");
        fuzz::check(params.size() == t.param_names().size(), "wrong number of path parameters");
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
