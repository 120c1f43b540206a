// Shared by the fuzz targets (tests/fuzz/fuzz_*.cpp): splitting one input into fields, the
// routes of every shipped example (loaded once), and invariant checks that abort, so libFuzzer
// and the ctest replay (replay_main.cpp) both see a broken invariant as a crash.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "config/loader.hpp"
#include "routes/route_table.hpp"

namespace batchgate::fuzz {

// An input read front to back: single bytes (choices), then fields separated by 0x1F (ASCII
// unit separator: never valid unescaped in JSON, YAML or an HTTP head, so seeds stay readable).
class input {
public:
    input(const std::uint8_t* data, std::size_t size) : rest_(reinterpret_cast<const char*>(data), size) {}

    // The next byte, 0 when the input is used up.
    std::uint8_t byte() {
        if (rest_.empty()) return 0;
        auto b = static_cast<std::uint8_t>(rest_.front());
        rest_.remove_prefix(1);
        return b;
    }
    // Up to the next separator (or the end).
    std::string_view field() {
        auto sep = rest_.find('\x1f');
        auto out = rest_.substr(0, sep);
        rest_ = sep == std::string_view::npos ? std::string_view{} : rest_.substr(sep + 1);
        return out;
    }
    std::string_view rest() const { return rest_; }

private:
    std::string_view rest_;
};

// A broken invariant: say which and abort (a crash for libFuzzer and for ctest alike).
[[noreturn]] inline void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz invariant broken: %s\n", what.c_str());
    std::fflush(stderr);
    std::abort();
}
inline void check(bool ok, const std::string& what) {
    if (!ok) fail(what);
}

// Every example config (examples/*.yaml and tests/testdata/write_routes.yaml), loaded once
// and kept alive with a route table each.
struct example_set {
    struct loaded {
        std::string file;
        std::unique_ptr<config::gateway_config> config;
        std::unique_ptr<routes::route_table> table;
    };
    std::vector<loaded> configs;
    std::vector<const config::route_settings*> coalesce;  // every coalesce route, file order
    std::vector<const config::route_settings*> fan_out;   // every fan_out route
};

inline void add_config(example_set& set, const std::string& name, config::gateway_config cfg) {
    example_set::loaded l;
    l.file = name;
    l.config = std::make_unique<config::gateway_config>(std::move(cfg));
    l.table = std::make_unique<routes::route_table>(*l.config);
    for (const auto& r : l.config->routes) {
        if (r.mode == config::route_mode::coalesce) set.coalesce.push_back(&r);
        if (r.mode == config::route_mode::fan_out) set.fan_out.push_back(&r);
    }
    set.configs.push_back(std::move(l));
}

inline const example_set& examples() {
    static const example_set set = [] {
        example_set s;
        std::vector<std::string> files;
        for (const auto& e : std::filesystem::directory_iterator(BATCHGATE_EXAMPLES))
            if (e.path().extension() == ".yaml") files.push_back(e.path().string());
        std::sort(files.begin(), files.end());  // route indices must not depend on the directory order
        files.push_back(std::string(BATCHGATE_TESTDATA) + "/write_routes.yaml");
        for (const auto& f : files) add_config(s, f, config::load_file(f));
        if (s.coalesce.empty() || s.fan_out.empty()) fail("no example routes found under " BATCHGATE_EXAMPLES);
        return s;
    }();
    return set;
}

// "Name: value" lines (LF or CRLF) -> lower-case name -> values, in order.
using header_map = std::map<std::string, std::vector<std::string>>;
inline header_map parse_headers(std::string_view text) {
    header_map out;
    while (!text.empty()) {
        auto nl = text.find('\n');
        auto line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        auto colon = line.find(':');
        if (colon == std::string_view::npos || colon == 0) continue;
        std::string name(line.substr(0, colon));
        for (auto& c : name)
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        auto value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
        // Beast's parser refuses control characters other than HTAB in a field value.
        bool ok = true;
        for (char c : value) ok = ok && (c == '\t' || (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f));
        if (ok) out[name].emplace_back(value);
    }
    return out;
}

// Repeated lines joined the way the dispatcher joins them (gateway/dispatcher.cpp header_value).
inline std::optional<std::string> joined(const header_map& headers, std::string_view name) {
    auto it = headers.find(std::string(name));
    if (it == headers.end()) return std::nullopt;
    const std::string_view sep = name == "cookie" ? "; " : ", ";
    std::string all;
    for (std::size_t i = 0; i < it->second.size(); ++i) {
        if (i) all += sep;
        all += it->second[i];
    }
    return all;
}

// True when text may go on a request line or into a header value as it is.
inline bool wire_safe(std::string_view text) {
    for (char c : text)
        if (c == '\r' || c == '\n' || c == '\0') return false;
    return true;
}

}  // namespace batchgate::fuzz
